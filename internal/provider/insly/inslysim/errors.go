package inslysim

import (
	"encoding/json"
	"net/http"
)

// IDS error codes the identifier service answers in {"errors":[{"code"}]}.
const (
	// CodeNotAuthorized is Cognito's NotAuthorizedException: wrong password,
	// unknown client, bad refresh token, wrong username on refresh, invalid
	// or expired access token.
	CodeNotAuthorized = "IDS10017"
	// CodePasswordResetRequired is Cognito's PasswordResetRequiredException.
	CodePasswordResetRequired = "IDS10018"
	// CodeTooManyFailedAttempts is answered when a user is locked out after
	// failed passwords. The simulator answers it only through a Fault.
	CodeTooManyFailedAttempts = "IDS10022"
	// CodeTooManyRequests is Cognito's TooManyRequestsException (throttling).
	// The simulator answers it only through a Fault.
	CodeTooManyRequests = "IDS10023"
	// CodeUserNotConfirmed is Cognito's UserNotConfirmedException.
	CodeUserNotConfirmed = "IDS10028"
	// CodeUserNotFound is Cognito's UserNotFoundException.
	CodeUserNotFound = "IDS10029"
	// CodeUndefined is the service's catch-all. The simulator also uses it for
	// an unknown tenant and for malformed requests, which no documented code
	// covers.
	CodeUndefined = "IDS99999"
)

// defaultMessages are the messages answered with each code when no more
// specific one applies. They follow the "<CognitoException>: <text>" form of
// the real service.
var defaultMessages = map[string]string{
	CodeNotAuthorized:         "NotAuthorizedException: Incorrect username or password.",
	CodePasswordResetRequired: "PasswordResetRequiredException: Password reset required for the user",
	CodeTooManyFailedAttempts: "NotAuthorizedException: Password attempts exceeded",
	CodeTooManyRequests:       "TooManyRequestsException: Rate exceeded",
	CodeUserNotConfirmed:      "UserNotConfirmedException: User is not confirmed.",
	CodeUserNotFound:          "UserNotFoundException: User does not exist.",
	CodeUndefined:             "Undefined error.",
}

// defaultStatus is the HTTP status a Fault with Code and no Status answers.
// The service answers every Cognito refusal with 400 (it is documented for bad
// credentials and an unknown tenant, and nothing suggests throttling differs),
// so IDS10023 is a 400 too: a client must classify by the IDS code, not by the
// status. Set Fault.Status to 429 to test the other reading. IDS99999, the
// catch-all for unexpected failures, is a 500.
func defaultStatus(code string) int {
	if code == CodeUndefined {
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

// apiError is one element of the service's "errors" array.
type apiError struct {
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Params  []string `json:"params"`
}

type errorsBody struct {
	Errors []apiError `json:"errors"`
}

// writeError answers status with a single error; params may be nil.
func writeError(w http.ResponseWriter, status int, code, message string, params ...string) {
	if params == nil {
		params = []string{}
	}
	writeErrors(w, status, []apiError{{Code: code, Message: message, Params: params}})
}

func writeErrors(w http.ResponseWriter, status int, errs []apiError) {
	writeJSON(w, status, errorsBody{Errors: errs})
}

// writeCode answers status with code and its default message.
func writeCode(w http.ResponseWriter, status int, code string) {
	writeError(w, status, code, defaultMessages[code])
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the simulator's own types are marshalled; this cannot happen.
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
