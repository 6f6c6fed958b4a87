package deploy

import (
	"encoding/json"
	"go/version"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const dockerfile = "Dockerfile"

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct{ cmd, args string }

// parseDockerfile reads the Dockerfile's instructions; no Docker engine
// runs here to build it, so these checks read it instead.
func parseDockerfile(t *testing.T) []instruction {
	t.Helper()
	var out []instruction
	var cur string
	for line := range strings.Lines(string(readFile(t, dockerfile))) {
		line = strings.TrimSpace(line)
		if cur == "" && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if rest, ok := strings.CutSuffix(line, `\`); ok {
			cur += rest + " "
			continue
		}
		cur += line
		cmd, args, _ := strings.Cut(cur, " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur = ""
	}
	return out
}

// dockerfileConfigPath is the --config path of the image's entrypoint.
func dockerfileConfigPath(t *testing.T) string {
	t.Helper()
	for _, in := range parseDockerfile(t) {
		if in.cmd == "ENTRYPOINT" {
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil {
				t.Fatalf("%s: ENTRYPOINT %s: want the exec (JSON) form, there is no shell: %v", dockerfile, in.args, err)
			}
			if len(argv) != 4 || !strings.HasSuffix(argv[0], "/tokenvend") || argv[1] != "serve" || argv[2] != "--config" {
				t.Fatalf("%s: ENTRYPOINT %q, want [.../tokenvend serve --config FILE]", dockerfile, argv)
			}
			return argv[3]
		}
	}
	t.Fatalf("%s: no ENTRYPOINT", dockerfile)
	return ""
}

// TestDockerfile checks what the image promises: a static, trimmed build
// with a Go at least as new as go.mod asks, a final stage with no shell,
// and a numeric non-root user.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	ins := parseDockerfile(t)
	var froms, runs []string
	var user, goVersion string
	for _, in := range ins {
		switch in.cmd {
		case "FROM":
			froms = append(froms, in.args)
		case "RUN":
			runs = append(runs, in.args)
		case "USER":
			user = in.args
		case "ARG":
			if v, ok := strings.CutPrefix(in.args, "GO_VERSION="); ok {
				goVersion = v
			}
		case "SHELL", "CMD":
			t.Errorf("%s: %s %s: the final image has no shell and the entrypoint takes no CMD", dockerfile, in.cmd, in.args)
		}
	}
	if len(froms) < 2 || !strings.Contains(froms[0], "golang:${GO_VERSION}") {
		t.Fatalf("FROM: got %q, want a golang:${GO_VERSION} build stage and a runtime stage", froms)
	}
	if final := froms[len(froms)-1]; !strings.HasPrefix(final, "gcr.io/distroless/static") && final != "scratch" {
		t.Errorf("final FROM %q: want distroless static or scratch", final)
	}

	want := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(readFile(t, "../go.mod"))
	if want == nil {
		t.Fatal("../go.mod: no go directive")
	}
	// The golang image runs with GOTOOLCHAIN=local: an older Go refuses to build.
	if !version.IsValid("go"+goVersion) || version.Compare("go"+goVersion, "go"+string(want[1])) < 0 {
		t.Errorf("ARG GO_VERSION=%s: want a Go release at least go.mod's %s", goVersion, want[1])
	}

	var build string
	for _, r := range runs {
		if strings.Contains(r, "go build") {
			build = r
		}
	}
	for _, flag := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/tokenvend"} {
		if !strings.Contains(build, flag) {
			t.Errorf("go build: %q lacks %s", build, flag)
		}
	}

	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("USER %q: want a numeric non-root uid, so runAsNonRoot can verify it", user)
	}
	dockerfileConfigPath(t)
}
