package inslysim

import (
	"io"
	"net/http"
)

// Endpoint names an identifier endpoint a Fault targets.
type Endpoint string

// Endpoints a Fault can target.
const (
	// EndpointAny targets all three identifier endpoints.
	EndpointAny Endpoint = ""
	// EndpointLogin is POST /login/{tenant_tag}.
	EndpointLogin Endpoint = "login"
	// EndpointClient is POST /token/client/{tenant_tag}.
	EndpointClient Endpoint = "client"
	// EndpointRefresh is POST /token/refresh/{tenant_tag}.
	EndpointRefresh Endpoint = "refresh"
)

// Fault makes identifier endpoints misbehave, to test how a client copes with
// an unavailable or throttling service. A faulted request is answered before
// anything else (tenant, content type, credentials) is looked at, and counts
// as an attempt but never as a success. The protected endpoint is never
// faulted. The first of Hang, Garbage, Code and Status that is set decides
// the answer; a Fault with none of them set is no fault.
type Fault struct {
	// Endpoint is the endpoint faulted; EndpointAny faults all three.
	Endpoint Endpoint
	// Hang makes the request block until the client gives up (its context
	// is done) or SetFault is called again, then answer 504 with no body.
	// Release hanging requests with SetFault before closing an
	// httptest.Server whose client has not given up: Close waits for them.
	Hang bool
	// Garbage answers 200 with a body that is not JSON.
	Garbage bool
	// Code answers the service's errors body with this IDS code (e.g.
	// CodeTooManyRequests) and Message, with HTTP Status, or when Status is 0
	// with 500 for CodeUndefined and 400 for every other code.
	Code string
	// Message goes with Code; empty means the code's usual message.
	Message string
	// Status is the HTTP status. Without Code, the answer is Status with Body
	// as it is (Content-Type application/json when Body is not empty).
	Status int
	// Body is the raw body answered with Status when Code is empty.
	Body string
	// Times is how many requests the fault affects before it clears itself;
	// 0 means until SetFault replaces it.
	Times int
}

func (f Fault) active() bool {
	return f.Hang || f.Garbage || f.Code != "" || f.Status != 0
}

// SetFault installs f, replacing any fault in place; SetFault(Fault{}) clears
// it. Either releases the requests a Hang fault holds.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
	s.faultLeft = f.Times
	close(s.release)
	s.release = make(chan struct{})
}

// takeFault returns the fault that applies to a request to ep, consuming one
// of its Times, and the channel that releases a hanging request.
func (s *Server) takeFault(ep Endpoint) (Fault, <-chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if !f.active() || (f.Endpoint != EndpointAny && f.Endpoint != ep) {
		return Fault{}, nil, false
	}
	if f.Times > 0 {
		s.faultLeft--
		if s.faultLeft <= 0 {
			s.fault = Fault{}
		}
	}
	return f, s.release, true
}

// applyFault answers r according to the fault in place for ep, if any, and
// reports whether it did.
func (s *Server) applyFault(ep Endpoint, w http.ResponseWriter, r *http.Request) bool {
	f, release, ok := s.takeFault(ep)
	if !ok {
		return false
	}
	switch {
	case f.Hang:
		// The server notices that the client went away only once the body
		// has been read, so read it before waiting.
		_, _ = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxBody))
		select {
		case <-r.Context().Done():
		case <-release:
			w.WriteHeader(http.StatusGatewayTimeout)
		}
	case f.Garbage:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("<html><body>502 Bad Gateway</body></html>"))
	case f.Code != "":
		status := f.Status
		if status == 0 {
			status = defaultStatus(f.Code)
		}
		msg := f.Message
		if msg == "" {
			msg = defaultMessages[f.Code]
		}
		writeError(w, status, f.Code, msg)
	default:
		if f.Body != "" {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(f.Status)
		_, _ = w.Write([]byte(f.Body))
	}
	return true
}
