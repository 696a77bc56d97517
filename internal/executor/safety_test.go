package executor

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCheckCPU(t *testing.T) {
	if err := checkCPU("amd64"); err != nil {
		t.Errorf("amd64: %v", err)
	}
	for _, arch := range []string{"arm64", "ppc64le", "riscv64"} {
		if err := checkCPU(arch); !errors.Is(err, ErrUnsupportedCPU) || !strings.Contains(err.Error(), arch) {
			t.Errorf("%s: %v, want ErrUnsupportedCPU naming it", arch, err)
		}
	}
}

// TestGracePeriod: a server slot's copy, or a service index half, that
// packets read before the last flip is rewritten only after a grace
// period; one wait covers every copy retired before it.
func TestGracePeriod(t *testing.T) {
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		t.Logf("membarrier(MEMBARRIER_CMD_GLOBAL): %v: grace periods fall back to a %v pause", errno, graceFallback)
	}
	h := newHarness(t, Config{MaxFlows: 1 << 10})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	waits := func() int { h.x.mu.Lock(); defer h.x.mu.Unlock(); return h.x.retired.waits }
	w0 := waits()
	// Both slots and the index were flipped: rewriting them waits once.
	h.do(func() error { return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 2, s2: 3}) })
	if got := waits() - w0; got != 1 {
		t.Fatalf("%d grace periods for a weight change after a flip, want 1", got)
	}
	// Nothing flipped since: a write to another slot waits for nothing.
	h.x.mu.Lock()
	h.x.retired.grace()
	w1 := h.x.retired.waits
	err := h.x.writeBackend(h.x.services[key].servers[s1].id, dispatchBackend{})
	w2 := h.x.retired.waits
	if err == nil {
		err = h.x.writeBackend(h.x.services[key].servers[s1].id, dispatchBackend{})
	}
	w3 := h.x.retired.waits
	h.x.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if w2 != w1 || w3 != w2+1 {
		t.Fatalf("waits %d, %d, %d: want none before the first write and one before the second", w1, w2, w3)
	}
}

// TestHashSeedChange: a daemon restarted with another hash seed refuses
// the pinned data plane, which would orphan every flow, and says why.
func TestHashSeedChange(t *testing.T) {
	pin := "/sys/fs/bpf/" + randomName("ndtest")
	t.Cleanup(func() { os.RemoveAll(pin) })
	h := newHarness(t, Config{MaxFlows: 1 << 10, PinPath: pin, HashSeed: 7})
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{h.server(s1, macS1, 1)}})
	if err := h.x.Close(); err != nil {
		t.Fatal(err)
	}
	h.do(func() error {
		x, err := New(Config{MaxFlows: 1 << 10, PinPath: pin, HashSeed: 8})
		if err == nil {
			x.Close()
			return errors.New("a changed hash seed was accepted")
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "hash_seed 7") {
			return err
		}
		t.Logf("refused: %v", err)
		x, err = New(Config{MaxFlows: 1 << 10, PinPath: pin, HashSeed: 7})
		if err != nil {
			return err
		}
		h.x = x
		return nil
	})
	if s := h.x.Services(); len(s) != 1 {
		t.Fatalf("after the refusal, the same seed took over %d services, want 1", len(s))
	}
}

// TestDrainMarkPinned: the drain mark lives with the pinned tables: a
// daemon that takes them over reads it, one that starts afresh does not,
// and the mark does not count as another table layout.
func TestDrainMarkPinned(t *testing.T) {
	pin := "/sys/fs/bpf/" + randomName("ndtest")
	t.Cleanup(func() { os.RemoveAll(pin) })
	h := newHarness(t, Config{MaxFlows: 1 << 10, PinPath: pin, HashSeed: 7})
	if d, err := h.x.Drained(); err != nil || d {
		t.Fatalf("a fresh data plane: drained %v (%v)", d, err)
	}
	if err := h.x.SetDrained(true); err != nil {
		t.Fatal(err)
	}
	if err := h.x.Close(); err != nil {
		t.Fatal(err)
	}
	reopen := func() {
		h.do(func() error {
			x, err := New(Config{MaxFlows: 1 << 10, PinPath: pin, HashSeed: 7})
			if err != nil {
				return err
			}
			h.x = x
			return nil
		})
	}
	reopen()
	if d, err := h.x.Drained(); err != nil || !d {
		t.Fatalf("taken over: drained %v (%v), want true", d, err)
	}
	if err := h.x.SetDrained(false); err != nil {
		t.Fatal(err)
	}
	h.x.Close()
	reopen()
	if d, err := h.x.Drained(); err != nil || d {
		t.Fatalf("undrained, taken over: drained %v (%v), want false", d, err)
	}
}
