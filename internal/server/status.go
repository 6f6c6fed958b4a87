package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenvend/tokenvend/internal/token"
)

// Domain is the google.rpc.ErrorInfo domain of every error.
const Domain = "tokenvend.dev"

var kindCodes = map[token.Kind]codes.Code{
	token.KindInternal:        codes.Internal,
	token.KindInvalid:         codes.InvalidArgument,
	token.KindNotFound:        codes.NotFound,
	token.KindDenied:          codes.PermissionDenied,
	token.KindUnauthenticated: codes.Unauthenticated,
	token.KindRejected:        codes.FailedPrecondition,
	token.KindUnavailable:     codes.Unavailable,
}

// toStatus is the one place a domain error becomes a gRPC status: the
// caller-facing message, and a google.rpc.ErrorInfo with the reason and the
// provider (and the upstream's own code where there is one). The cause
// (Error.Err) never leaves the service.
func toStatus(err error, provider string) error {
	// A classified error wins: an upstream that timed out is UNAVAILABLE
	// even though a context error is its cause. Only a bare context error
	// is the caller's own deadline or cancellation.
	var e *token.Error
	switch {
	case errors.As(err, &e):
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the request was cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the caller's deadline passed before a token was ready")
	default:
		e = &token.Error{Kind: token.KindInternal, Reason: "INTERNAL", Message: "internal error"}
	}
	msg := e.Message
	if e.Kind == token.KindRejected || e.Kind == token.KindUnavailable {
		msg = fmt.Sprintf("provider %q: %s", provider, msg)
	}
	// Metadata must be valid UTF-8 or the details cannot be marshalled.
	md := map[string]string{"provider": strings.ToValidUTF8(provider, "?")}
	if e.Upstream != "" {
		md["upstream_code"] = strings.ToValidUTF8(e.Upstream, "?")
	}
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: e.Reason, Domain: Domain, Metadata: md}}
	if e.RetryAfter > 0 {
		md["retry_after_seconds"] = strconv.Itoa(int(e.RetryAfter.Seconds() + 0.5))
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)})
	}
	st := status.New(kindCodes[e.Kind], strings.ToValidUTF8(msg, "?"))
	if withDetails, err := st.WithDetails(details...); err == nil {
		st = withDetails
	}
	return st.Err()
}

// codeOf is the gRPC code toStatus gives err (OK for nil), for audit lines
// and counts.
func codeOf(err error, provider string) codes.Code {
	if err == nil {
		return codes.OK
	}
	return status.Code(toStatus(err, provider))
}
