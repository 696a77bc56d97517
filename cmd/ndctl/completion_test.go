package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	h := newHarness(t)
	if code := h.run("version"); code != exitOK || !strings.HasPrefix(h.stdout.String(), "ndctl ") {
		t.Fatalf("ndctl version: exit %d, %q", code, h.stdout.String())
	}
	if h.dialled {
		t.Error("ndctl version dialled ndd")
	}
	if code := h.run("version", "--json"); code != exitOK {
		t.Fatalf("ndctl version --json: exit %d", code)
	}
	var v struct{ Version string }
	if err := json.Unmarshal(h.stdout.Bytes(), &v); err != nil || v.Version == "" {
		t.Errorf("ndctl version --json: %q: %v", h.stdout.String(), err)
	}
	if code := h.run("version", "extra"); code != exitUsage {
		t.Errorf("ndctl version extra: exit %d", code)
	}
}

// TestBashCompletion loads the generated script into bash and asks it to
// complete command lines as bash would.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash:", err)
	}
	h := newHarness(t)
	if code := h.run("completion", "bash"); code != exitOK {
		t.Fatalf("ndctl completion bash: exit %d, %s", code, h.stderr.String())
	}
	script := filepath.Join(t.TempDir(), "ndctl")
	if err := os.WriteFile(script, h.stdout.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := h.run("completion", "zsh"); code != exitUsage {
		t.Errorf("ndctl completion zsh: exit %d", code)
	}

	complete := func(line string) string {
		t.Helper()
		cmd := exec.Command(bash, "--norc", "-c", `source "$1" || exit 1
read -ra COMP_WORDS <<<"$2"
[[ $2 == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_ndctl
echo "${COMPREPLY[*]}"`, "bash", script, line)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("complete %q: %v: %s", line, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, tc := range []struct{ line, want string }{
		{"ndctl cl", "cluster"},
		{"ndctl cluster ", "add remove list"},
		{"ndctl --socket /run/nd/nd.sock ser", "server"},
		{"ndctl server set 198.51.100.100 80 198.51.100.11 --q", "--quiesce"},
		{"ndctl server add --protocol ", "tcp udp"},
		{"ndctl port add --sticky-time 30s --pro", "--protocol"},
		{"ndctl manager set --policy s", "static"},
		{"ndctl manager set --interval ", ""},
		{"ndctl completion ", "bash"},
		{"ndctl help con", "config"},
		{"ndctl status --w", "--watch"},
		{"ndctl flows --json --l", "--limit"},
		{"ndctl ver", "version"},
	} {
		if got := complete(tc.line); got != tc.want {
			t.Errorf("complete %q = %q, want %q", tc.line, got, tc.want)
		}
	}
	// Every command of the tree is offered where it belongs.
	for _, path := range commandPaths() {
		prefix := "ndctl " + strings.Join(path[:len(path)-1], " ")
		if len(path) > 1 {
			prefix += " "
		}
		if got := complete(prefix + path[len(path)-1]); !strings.Contains(" "+got+" ", " "+path[len(path)-1]+" ") {
			t.Errorf("complete %q = %q", prefix+path[len(path)-1], got)
		}
	}
}
