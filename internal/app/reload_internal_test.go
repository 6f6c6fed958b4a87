package app

import (
	"reflect"
	"testing"
	"time"

	"github.com/tokenvend/tokenvend/internal/config"
)

// TestCacheOptionsCoverCacheSection: every setting of the cache section
// reaches the caches New and Reload build (through cacheOptions, into the
// token.Options field of the same name), so that a reload applies it. A
// new setting fails here until it is mapped, or listed in elsewhere with
// where it is applied and whether a reload applies it.
func TestCacheOptionsCoverCacheSection(t *testing.T) {
	t.Parallel()
	elsewhere := map[string]string{
		// The upstream HTTP client's Timeout, set once at start.
		"AttemptTimeout": "http.Client.Timeout",
	}
	var c config.Cache
	v := reflect.ValueOf(&c).Elem()
	for i := range v.NumField() {
		switch f := v.Field(i); f.Kind() {
		case reflect.Int64: // time.Duration
			f.SetInt(int64(time.Duration(i+1) * time.Second))
		case reflect.Int:
			f.SetInt(int64(i + 1))
		default:
			t.Fatalf("config.Cache.%s: a %s; teach this test its kind", v.Type().Field(i).Name, f.Type())
		}
	}
	o := reflect.ValueOf((&App{}).cacheOptions(c))
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if elsewhere[name] != "" {
			continue
		}
		got := o.FieldByName(name)
		if !got.IsValid() {
			t.Errorf("config.Cache.%s: token.Options has no field %s; map it in cacheOptions or list it in elsewhere", name, name)
			continue
		}
		if got.Int() != v.Field(i).Int() {
			t.Errorf("token.Options.%s: got %v, want %v (config.Cache.%s)", name, got.Int(), v.Field(i).Int(), name)
		}
	}
}
