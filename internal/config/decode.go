package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// FieldError is a problem with one configuration field, named by its path
// (for example "providers[2].private_key").
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// pairs lists a mapping's key/value nodes with merge keys expanded.
func pairs(n *yaml.Node) []*yaml.Node {
	var own, merged []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "<<" && n.Content[i].Tag == "!!merge" {
			m := n.Content[i+1]
			for m.Kind == yaml.AliasNode {
				m = m.Alias
			}
			if m.Kind == yaml.MappingNode {
				merged = append(merged, pairs(m)...)
			}
			continue
		}
		own = append(own, n.Content[i], n.Content[i+1])
	}
	out := own
	for i := 0; i+1 < len(merged); i += 2 {
		dup := false
		for j := 0; j < len(own); j += 2 {
			if own[j].Value == merged[i].Value {
				dup = true
			}
		}
		if !dup {
			out = append(out, merged[i], merged[i+1])
		}
	}
	return out
}

// Errorf returns a FieldError for path.
func Errorf(path, format string, args ...any) *FieldError {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Join joins a path and a key into a field path.
func Join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Nest prefixes the path of every FieldError in err (which may be an
// errors.Join of many) with prefix, so a kind can report "password: ..."
// and the caller turn it into "providers[0].password: ...".
func Nest(prefix string, err error) error {
	if err == nil {
		return nil
	}
	var out []error
	for _, e := range flatten(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, Errorf(Join(prefix, fe.Path), "%s", fe.Msg))
		} else {
			out = append(out, Errorf(prefix, "%s", e.Error()))
		}
	}
	return errors.Join(out...)
}

// flatten lists the leaves of a tree of joined errors.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// decode fills v (a pointer to a struct) from a YAML mapping node, strictly:
// a key with no matching field is an error, so a typo never silently drops
// a setting. Every problem is reported with its path; decoding goes on past
// errors so one run names every bad field. Keys listed in skip are left for
// someone else (a provider's name and kind).
func decode(n *yaml.Node, v any, path string, skip ...string) error {
	var errs []error
	decodeValue(n, reflect.ValueOf(v).Elem(), path, skip, &errs)
	return errors.Join(errs...)
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

func decodeValue(n *yaml.Node, v reflect.Value, path string, skip []string, errs *[]error) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if v.Kind() == reflect.Struct && !reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		decodeStruct(n, v, path, skip, errs)
		return
	}
	if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		if n.Kind != yaml.SequenceNode {
			*errs = append(*errs, Errorf(path, "must be a list"))
			return
		}
		v.Set(reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content)))
		for i, item := range n.Content {
			decodeValue(item, v.Index(i), fmt.Sprintf("%s[%d]", path, i), nil, errs)
		}
		return
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		*errs = append(*errs, Errorf(path, "%s", describe(err, v.Type())))
	}
}

func decodeStruct(n *yaml.Node, v reflect.Value, path string, skip []string, errs *[]error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty section keeps its defaults
	}
	if n.Kind != yaml.MappingNode {
		*errs = append(*errs, Errorf(path, "must be a mapping"))
		return
	}
	fields := map[string]reflect.Value{}
	collectFields(v, fields)
	seen := map[string]bool{}
	kv := pairs(n)
	for i := 0; i+1 < len(kv); i += 2 {
		key, val := kv[i].Value, kv[i+1]
		p := Join(path, key)
		if seen[key] {
			*errs = append(*errs, Errorf(p, "set twice"))
			continue
		}
		seen[key] = true
		f, ok := fields[key]
		switch {
		case ok:
			decodeValue(val, f, p, nil, errs)
		case !contains(skip, key):
			*errs = append(*errs, Errorf(p, "unknown key"))
		}
	}
}

// collectFields maps yaml keys to the fields of a struct, following
// `yaml:",inline"` embedded structs.
func collectFields(v reflect.Value, out map[string]reflect.Value) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		switch {
		case tag == "-" || !sf.IsExported():
		case opts == "inline":
			collectFields(v.Field(i), out)
		case name != "":
			out[name] = v.Field(i)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// describe turns a yaml.v3 decoding error into a short message that says
// what was expected, without echoing the value (it may be a secret put in
// the wrong place).
func describe(err error, t reflect.Type) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err.Error()
	}
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "must be a duration such as 30s, 5m or 1h"
	case t.Kind() == reflect.String:
		return "must be a string"
	case t.Kind() == reflect.Bool:
		return "must be true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "must be a whole number"
	case t.Kind() == reflect.Map:
		return "must be a mapping of strings"
	case t.Kind() == reflect.Slice && t.Elem().Kind() >= reflect.Int && t.Elem().Kind() <= reflect.Uint64:
		return "must be a list of whole numbers"
	case t.Kind() == reflect.Slice:
		return "must be a list of strings"
	default:
		return "has the wrong type"
	}
}
