// Package tokenvend holds the service's API documents, generated from the
// proto. The service itself lives in internal/ and its binary in
// cmd/tokenvend.
package tokenvend

import _ "embed"

// OpenAPI is the OpenAPI (Swagger 2.0) document of the REST API, generated
// by protoc-gen-openapiv2 from proto/tokenvend/v1/token_service.proto.
//
//go:embed gen/openapiv2/tokenvend/v1/token_service.swagger.json
var OpenAPI []byte
