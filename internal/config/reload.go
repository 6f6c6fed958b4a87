package config

import (
	"reflect"
)

// Same reports whether p and q configure a provider alike: the same name,
// kind and kind-specific keys, compared as decoded values, so comments,
// quoting, key order, anchors and a provider's place in the list do not
// count, while any value that differs does (1h and 60m differ). A secret
// given by {file: ...} or {env: ...} compares by where it lives, not by
// what it holds: its content is read at every login anyway.
func (p Provider) Same(q Provider) bool {
	if p.Name != q.Name || p.Kind != q.Kind {
		return false
	}
	pv, perr := nodeValue(p)
	qv, qerr := nodeValue(q)
	return perr == nil && qerr == nil && reflect.DeepEqual(pv, qv)
}

// nodeValue is a provider's block decoded into plain maps, lists and
// scalars.
func nodeValue(p Provider) (any, error) {
	if p.node == nil {
		return nil, nil
	}
	var v any
	err := p.node.Decode(&v)
	return v, err
}

// Validate checks c as Parse does, for a Config a caller has changed (a
// reload keeps the running listeners' settings in the new config, and
// what results must still be valid).
func (c *Config) Validate() error { return c.validate() }
