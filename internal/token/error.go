package token

import (
	"errors"
	"time"
)

// Kind classifies an error by what the caller can do about it. The server
// maps each Kind to exactly one gRPC code.
type Kind int

const (
	// KindInternal is a bug or an unclassified failure.
	KindInternal Kind = iota
	// KindInvalid is a malformed request (INVALID_ARGUMENT).
	KindInvalid
	// KindNotFound names something that does not exist (NOT_FOUND).
	KindNotFound
	// KindUnauthenticated is a caller that could not be identified
	// (UNAUTHENTICATED).
	KindUnauthenticated
	// KindDenied asks for something the caller may not have
	// (PERMISSION_DENIED).
	KindDenied
	// KindRejected means the upstream refused the configured credentials
	// or asks for something a machine cannot answer (FAILED_PRECONDITION).
	// It is never retried automatically: retrying a wrong password locks
	// accounts.
	KindRejected
	// KindUnavailable is a transient upstream failure: unreachable, timing
	// out, 5xx or answering garbage (UNAVAILABLE). It may be retried.
	KindUnavailable
)

// Reasons for errors that are not specific to one scheme. They become
// google.rpc.ErrorInfo reasons, so they are stable API.
const (
	ReasonCredentialsRejected = "CREDENTIALS_REJECTED"
	ReasonAccountNotVerified  = "ACCOUNT_NOT_VERIFIED"
	ReasonAccountLocked       = "ACCOUNT_LOCKED"
	ReasonChallengeRequired   = "CHALLENGE_REQUIRED"
	ReasonUpstreamUnavailable = "UPSTREAM_UNAVAILABLE"
	ReasonMinValidTooLong     = "MIN_VALID_FOR_TOO_LONG"
	// ReasonSecretUnreadable: the configured secret (an env variable or a
	// file) cannot be read or used at login time; no login was attempted.
	// The Cache pauses logins briefly rather than holding it like a
	// rejection.
	ReasonSecretUnreadable = "SECRET_UNREADABLE"
	// ReasonTokenExpiredOnArrival: the upstream answered a token that had
	// expired (or had less than min_valid left) by this host's clock,
	// most likely because one of the clocks is wrong. It is transient:
	// retried with backoff, never cached.
	ReasonTokenExpiredOnArrival = "TOKEN_EXPIRED_ON_ARRIVAL"
)

// Error is a classified failure. Message is written for the caller: it says
// what happened and what to do, and never holds a secret, a token or an
// internal detail. Err keeps the cause for the service's own log.
type Error struct {
	Kind   Kind
	Reason string
	// Message is safe to send to callers.
	Message string
	// Upstream is the upstream's own error code, e.g. LOGIN_BAD_CREDENTIALS.
	Upstream string
	// Hold asks the Cache to hold logins at least this long (an upstream
	// that locked the account says for how long).
	Hold time.Duration
	// RetryAfter, on an error served from the hold, says when the next
	// login may be tried.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Rejected reports that the upstream refused the configured credentials.
func Rejected(reason, upstream, message string) *Error {
	return &Error{Kind: KindRejected, Reason: reason, Upstream: upstream, Message: message}
}

// SecretUnreadable reports that the configured secret named what (the
// config key, e.g. "password") cannot be read or used; cause says why. The
// cause names where the secret is read from (a variable, a file), so it
// stays in the service's log and out of the caller's message.
func SecretUnreadable(what string, cause error) *Error {
	return &Error{
		Kind:    KindRejected,
		Reason:  ReasonSecretUnreadable,
		Message: "the configured " + what + " cannot be read or used: an operator must check it (the service log says why)",
		Err:     cause,
	}
}

// Unavailable reports a transient upstream failure.
func Unavailable(message string, cause error) *Error {
	return &Error{Kind: KindUnavailable, Reason: ReasonUpstreamUnavailable, Message: message, Err: cause}
}

// KindOf returns the Kind of err, KindInternal when it is not an *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}
