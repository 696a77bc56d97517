package ha_test

import (
	"encoding/json"
	"testing"

	"github.com/nd-dispatcher/nd/internal/ha"
)

// TestStateJSON: a Status written as JSON (what the API serves) reads back
// the same, states included, and unknown states are refused.
func TestStateJSON(t *testing.T) {
	in := ha.Status{State: ha.StateActive, Peers: []ha.PeerStatus{{State: ha.StateStandby}, {State: ha.StateStopping}, {}}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out ha.Status
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	if out.State != in.State || len(out.Peers) != 3 {
		t.Fatalf("read back %+v from %s", out, b)
	}
	for i, p := range out.Peers {
		if p.State != in.Peers[i].State {
			t.Errorf("peer %d state %v, want %v", i, p.State, in.Peers[i].State)
		}
	}
	var s ha.State
	if err := json.Unmarshal([]byte(`"leader"`), &s); err == nil {
		t.Errorf("state \"leader\" accepted as %v", s)
	}
}
