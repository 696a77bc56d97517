package nd_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The house's rules of import (docs/ARCHITECTURE.md, "Packages"): data
// flows config -> daemon -> manager -> executor, and what a package may
// not reach, directly or through another, is listed here.
func TestImportRules(t *testing.T) {
	const mod = "github.com/nd-dispatcher/nd/"
	dataPlane := []string{"github.com/cilium/ebpf", "github.com/vishvananda/netlink", mod + "internal/executor"}
	transport := []string{"net/http", "google.golang.org/grpc", mod + "internal/api", mod + "internal/ha", mod + "internal/daemon"}
	policy := []string{mod + "internal/manager", mod + "internal/config", mod + "internal/daemon", mod + "internal/advisor", mod + "internal/agent"}
	type rule struct {
		pkg    string
		forbid []string
		why    string
	}
	rules := []rule{
		{"internal/nd", []string{mod}, "the shared vocabulary imports nothing of nd"},
		{"internal/yamlwalk", []string{mod}, "reading YAML is a leaf that config and the agent share"},
		{"internal/ifaddr", []string{mod}, "interface addresses are a leaf that the daemon and the executor share"},
		{"internal/connlimit", []string{mod}, "connection limits are a leaf that the API and the agent share"},
		{"internal/lograte", []string{mod}, "rate-limited logging is a leaf that the API and the agent share"},
		{"internal/config", append(dataPlane, transport...), "configuration is data"},
		{"internal/maglev", append(append(dataPlane, transport...), mod+"internal/nd"), "Maglev tables are pure computation"},
		{"internal/manager", append(dataPlane, transport...), "the manager reads the data plane through its DataPlane interface"},
		{"internal/executor", policy, "the executor carries out decisions, it makes none"},
		{"internal/api", []string{"github.com/cilium/ebpf", mod + "internal/executor", mod + "internal/daemon"}, "the API talks to the daemon through its Controller interface, and ndctl links it"},
		{"internal/metrics", []string{"github.com/cilium/ebpf", mod + "internal/executor", mod + "internal/daemon"}, "the collectors read status sources, not the daemon"},
		{"internal/bgp", append(policy, mod+"internal/executor", mod+"internal/api"), "the speaker announces what the daemon decides; it decides nothing"},
	}
	// ndctl, the operator's tool, links no data plane (its lab embeds a
	// compiled XDP pass program and attaches it with iproute2).
	rules = append(rules,
		rule{"cmd/ndctl", []string{"github.com/cilium/ebpf", mod + "internal/executor", mod + "internal/daemon"}, "the CLI talks to ndd over the API and links no data plane"},
		rule{"internal/lab", []string{"github.com/cilium/ebpf", mod + "internal/executor"}, "the lab builds namespaces; ndctl runs it"})
	for _, r := range rules {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", mod+r.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", r.pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == mod+r.pkg {
				continue
			}
			for _, f := range r.forbid {
				if dep == f || strings.HasPrefix(dep, f+"/") || (strings.HasSuffix(f, "/") && strings.HasPrefix(dep, f)) {
					t.Errorf("%s depends on %s: %s", r.pkg, dep, r.why)
				}
			}
		}
	}
}
