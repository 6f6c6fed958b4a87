package identityx

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/tokenvend/tokenvend/internal/provider/upstream"
	"github.com/tokenvend/tokenvend/internal/token"
)

// Codes of the GraphQL errors IdentityX (Apollo Server) answers in
// errors[].extensions.code.
const (
	codeUnauthenticated = "UNAUTHENTICATED"
	codeForbidden       = "FORBIDDEN"
	codeBadUserInput    = "BAD_USER_INPUT"
)

// requestRefused are the codes of a request IdentityX would not run at all:
// it did not parse, validate or have the shape of a GraphQL request. Sent
// to the right endpoint, the operations here never get them, so they mean
// endpoint is not IdentityX's GraphQL URL.
var requestRefused = map[string]bool{
	"GRAPHQL_PARSE_FAILED":      true,
	"GRAPHQL_VALIDATION_FAILED": true,
	"BAD_REQUEST":               true,
}

// gqlError is an answer that carried GraphQL errors: Code is the first
// error's extensions.code, sanitised by upstream.Code. The messages are
// not kept: they are free text from the upstream.
type gqlError struct {
	Code string
}

// call posts one GraphQL operation to endpoint with headers h and decodes
// the answer's data into data. It returns a *gqlError when the answer has
// errors, whatever its data says: IdentityX answers a failed nullable
// field with {"data":{"field":null},"errors":[...]}, so data alone cannot
// tell. Every other failure is a classified *token.Error.
func call(ctx context.Context, hc *http.Client, endpoint string, h map[string]string, query string, vars map[string]any, data any) (*gqlError, error) {
	body, err := json.Marshal(struct {
		Query     string         `json:"query"`
		Variables map[string]any `json:"variables,omitempty"`
	}{query, vars})
	if err != nil {
		return nil, err
	}
	status, raw, err := upstream.Post(ctx, hc, endpoint, "application/json", body, h)
	if err != nil {
		return nil, err
	}
	// Apollo answers 200 for errors raised by an operation and 400 for a
	// request it would not run; anything else is not a GraphQL answer.
	if status != http.StatusOK && status != http.StatusBadRequest {
		return nil, upstream.Unexpected(status)
	}
	var ans struct {
		Data   json.RawMessage `json:"data"`
		Errors []struct {
			Extensions struct {
				Code string `json:"code"`
			} `json:"extensions"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(raw, &ans); err != nil {
		return nil, upstream.Garbage(fmt.Sprintf("an HTTP %d that is not a GraphQL answer", status))
	}
	if len(ans.Errors) > 0 {
		return &gqlError{Code: upstream.Code(ans.Errors[0].Extensions.Code)}, nil
	}
	if status != http.StatusOK {
		return nil, upstream.Garbage("an HTTP 400 without GraphQL errors")
	}
	if len(ans.Data) == 0 || json.Unmarshal(ans.Data, data) != nil {
		return nil, upstream.Garbage("a GraphQL answer without the data asked for")
	}
	return nil, nil
}

// otherError classifies the GraphQL errors an operation has no special
// meaning for. A request IdentityX refused to run means a wrong endpoint,
// which repeating cannot fix; any other code (INTERNAL_SERVER_ERROR, say)
// is the upstream failing, which may pass.
func otherError(g *gqlError) *token.Error {
	if requestRefused[g.Code] {
		return token.Rejected(ReasonConfigRejected, g.Code, fmt.Sprintf(
			"the upstream refused the request as not valid GraphQL for IdentityX (%s): an operator must check that endpoint is the IdentityX GraphQL URL", g.Code))
	}
	e := token.Unavailable(fmt.Sprintf("IdentityX answered with a GraphQL error (%s)", g.Code), nil)
	e.Upstream = g.Code
	return e
}
