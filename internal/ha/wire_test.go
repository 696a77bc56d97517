package ha

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

var (
	testKey  = []byte("0123456789abcdef-test-key")
	testSelf = netip.MustParseAddrPort("198.51.100.11:7400")
	testPeer = netip.MustParseAddrPort("198.51.100.12:7400")
)

// offlineNode is a Node without sockets, for the message handlers.
func offlineNode(t testing.TB, o Options) *Node {
	t.Helper()
	cfg := Config{Self: testSelf, Peers: []netip.AddrPort{testPeer}, Key: testKey, VIPs: []netip.Addr{netip.MustParseAddr("198.51.100.100")}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.setDefaults()
	n := &Node{cfg: cfg, o: o, group: groupID(cfg.Group), replay: newReplayGuard(), wake: make(chan struct{}, 1),
		state: StateStandby, peers: map[netip.AddrPort]*peer{testPeer: {addr: testPeer}}, sessions: map[netip.AddrPort]*session{},
		stateCh: make(chan struct{}), log: discardLogger()}
	n.c.rejected = map[string]*atomic.Uint64{}
	for _, r := range rejectReasons {
		n.c.rejected[r] = new(atomic.Uint64)
	}
	return n
}

// peerFrames seals frames as testPeer would.
type peerFrames struct {
	key   []byte
	group uint32
	epoch uint64
	seq   uint64
}

func newPeerFrames() *peerFrames {
	return &peerFrames{key: testKey, group: groupID(DefaultGroup), epoch: 1000}
}

func (p *peerFrames) frame(t msgType, ch channel, payload []byte) []byte {
	p.seq++
	return seal(nil, p.key, header{Type: t, Channel: ch, Group: p.group, Sender: testPeer, Epoch: p.epoch, Seq: p.seq}, payload)
}

func TestSealOpen(t *testing.T) {
	h := header{Type: msgHeartbeat, Channel: chanDatagram, Group: 7, Sender: netip.MustParseAddrPort("[2001:db8::5]:99"), Epoch: 42, Seq: 3}
	hb := heartbeat{State: StateActive, Priority: 200, Preempt: true, Takeover: false, ConfigVer: 9}
	b := seal(nil, testKey, h, hb.append(nil))
	if len(b) != overhead+heartbeatLen {
		t.Fatalf("frame of %d bytes, want %d", len(b), overhead+heartbeatLen)
	}
	gh, payload, err := open(testKey, b)
	if err != nil {
		t.Fatal(err)
	}
	if gh != h {
		t.Errorf("header %+v, want %+v", gh, h)
	}
	ghb, err := parseHeartbeat(payload)
	if err != nil || ghb != hb {
		t.Errorf("heartbeat %+v, %v; want %+v", ghb, err, hb)
	}
	// An IPv4 sender comes back as IPv4, not mapped.
	h.Sender = testSelf
	gh, _, err = open(testKey, seal(nil, testKey, h, nil))
	if err != nil || gh.Sender != testSelf {
		t.Errorf("sender %s, %v; want %s", gh.Sender, err, testSelf)
	}

	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		if _, _, err := open(testKey, c); err == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		}
	}
	if _, _, err := open([]byte("another-key-of-enough-length"), b); rejectReason(err) != RejectAuth {
		t.Errorf("wrong key: %v, want %s", err, RejectAuth)
	}
	for _, n := range []int{0, 10, overhead - 1, len(b) - 1} {
		if _, _, err := open(testKey, b[:n]); rejectReason(err) != RejectMalformed || !errors.Is(err, ErrRejected) {
			t.Errorf("truncated to %d: %v, want %s", n, err, RejectMalformed)
		}
	}
}

func TestFlowsRoundTrip(t *testing.T) {
	recs := []FlowRecord{
		{Client: netip.MustParseAddrPort("198.51.100.2:40000"), VIP: netip.MustParseAddrPort("198.51.100.100:80"), Proto: 6, Server: netip.MustParseAddr("203.0.113.21")},
		{Client: netip.MustParseAddrPort("[2001:db8::2]:40001"), VIP: netip.MustParseAddrPort("[2001:db8::100]:443"), Proto: 17, Server: netip.MustParseAddr("2001:db8:1::21"), Closing: true},
		{Client: netip.MustParseAddrPort("198.51.100.3:1"), VIP: netip.MustParseAddrPort("198.51.100.100:80"), Proto: 6, Closed: true},
	}
	got, err := parseFlows(appendFlows(nil, recs))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) {
		t.Fatalf("%d records, want %d", len(got), len(recs))
	}
	for i := range recs {
		if got[i] != recs[i] {
			t.Errorf("record %d: %+v, want %+v", i, got[i], recs[i])
		}
	}
	p := appendFlows(nil, recs)
	for n := range len(p) {
		if _, err := parseFlows(p[:n]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
	if _, err := parseFlows(append(p, 0)); err == nil {
		t.Error("trailing byte accepted")
	}
	open := FlowRecord{Client: recs[0].Client, VIP: recs[0].VIP, Proto: 6}
	if _, err := parseFlows(appendFlows(nil, []FlowRecord{open})); err == nil {
		t.Error("an open flow without a server accepted")
	}
}

func TestConfigPayload(t *testing.T) {
	data := []byte("clusters: []\n")
	c := configMsg{Version: 3, Hash: sha256.Sum256(data), Data: data}
	got, err := parseConfig(c.append(nil))
	if err != nil || got.Version != 3 || !bytes.Equal(got.Data, data) {
		t.Fatalf("config %+v, %v", got, err)
	}
	bad := c.append(nil)
	bad[len(bad)-1] ^= 1
	if _, err := parseConfig(bad); err == nil {
		t.Error("config whose hash does not match accepted")
	}
}

func TestReplayGuard(t *testing.T) {
	g := newReplayGuard()
	k := replayKey{testPeer, chanDatagram}
	steps := []struct {
		epoch, seq uint64
		ok         bool
	}{
		{5, 10, true},
		{5, 10, false}, // the same again
		{5, 9, true},   // late but inside the window
		{5, 9, false},
		{5, 12, true},
		{5, 11, true},
		{5, 100, true},
		{5, 36, false},  // below the window (100-64)
		{5, 37, true},   // the window's oldest slot
		{4, 500, false}, // an earlier life of the sender
		{6, 1, true},    // it restarted
		{5, 101, false}, // and the old life is over
		{6, 1, false},
	}
	for i, s := range steps {
		err := g.check(k, s.epoch, s.seq)
		if (err == nil) != s.ok {
			t.Fatalf("step %d (epoch %d seq %d): %v, want ok=%v", i, s.epoch, s.seq, err, s.ok)
		}
		if err != nil && rejectReason(err) != RejectReplay {
			t.Fatalf("step %d: reason %s", i, rejectReason(err))
		}
	}
	// The stream space is separate.
	if err := g.check(replayKey{testPeer, chanStream}, 6, 1); err != nil {
		t.Errorf("stream sequence 1: %v", err)
	}
}

func TestHandleDatagram(t *testing.T) {
	n := offlineNode(t, Options{})
	pf := newPeerFrames()
	now := time.Now()
	hb := heartbeat{State: StateActive, Priority: 50}.append(nil)

	good := pf.frame(msgHeartbeat, chanDatagram, hb)
	if err := n.handleDatagram(good, now); err != nil {
		t.Fatalf("valid heartbeat: %v", err)
	}
	if p := n.peers[testPeer]; !p.heard || p.hb.State != StateActive || p.hb.Priority != 50 {
		t.Fatalf("peer not recorded: %+v", p)
	}
	forged := *pf
	forged.key = []byte("not-the-group-key-at-all")
	wrongGroup := *pf
	wrongGroup.group = groupID("other")
	stranger := seal(nil, testKey, header{Type: msgHeartbeat, Group: pf.group, Sender: netip.MustParseAddrPort("198.51.100.99:7400"), Epoch: 1, Seq: 1}, hb)
	cases := []struct {
		name, reason string
		b            []byte
	}{
		{"replayed", RejectReplay, good},
		{"forged", RejectAuth, forged.frame(msgHeartbeat, chanDatagram, hb)},
		{"other group", RejectGroup, wrongGroup.frame(msgHeartbeat, chanDatagram, hb)},
		{"unknown sender", RejectPeer, stranger},
		{"stream channel", RejectChannel, pf.frame(msgHeartbeat, chanStream, hb)},
		{"flows by UDP", RejectChannel, pf.frame(msgFlows, chanDatagram, appendFlows(nil, nil))},
		{"short heartbeat", RejectMalformed, pf.frame(msgHeartbeat, chanDatagram, hb[:5])},
		{"bad state", RejectMalformed, pf.frame(msgHeartbeat, chanDatagram, heartbeat{State: 9}.append(nil))},
		{"garbage", RejectMalformed, []byte("hello")},
	}
	for _, c := range cases {
		err := n.handleDatagram(c.b, now)
		if err == nil || rejectReason(err) != c.reason {
			t.Errorf("%s: %v, want reason %s", c.name, err, c.reason)
		}
	}
}

func TestHandleFrame(t *testing.T) {
	var got []FlowRecord
	var configs [][]byte
	n := offlineNode(t, Options{
		OnFlows:  func(r []FlowRecord) error { got = append(got, r...); return nil },
		OnConfig: func(b []byte) error { configs = append(configs, b); return nil },
	})
	pf := newPeerFrames()
	rec := FlowRecord{Client: netip.MustParseAddrPort("198.51.100.2:40000"), VIP: netip.MustParseAddrPort("198.51.100.100:80"), Proto: 6, Server: netip.MustParseAddr("203.0.113.21")}
	fl := pf.frame(msgFlows, chanStream, appendFlows(nil, []FlowRecord{rec}))
	if _, err := n.handleFrame(fl, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != rec {
		t.Fatalf("flows %+v", got)
	}
	if _, err := n.handleFrame(fl, testPeer); rejectReason(err) != RejectReplay {
		t.Errorf("replayed flows: %v", err)
	}
	data := []byte("a: 1\n")
	cm := configMsg{Version: 1, Hash: sha256.Sum256(data), Data: data}
	for range 2 {
		if _, err := n.handleFrame(pf.frame(msgConfig, chanStream, cm.append(nil)), testPeer); err != nil {
			t.Fatal(err)
		}
	}
	if len(configs) != 1 {
		t.Errorf("OnConfig called %d times for one configuration sent twice, want 1", len(configs))
	}
	if _, err := n.handleFrame(pf.frame(msgHeartbeat, chanStream, heartbeat{State: StateActive}.append(nil)), testPeer); rejectReason(err) != RejectChannel {
		t.Errorf("heartbeat on a stream: %v", err)
	}
	st := n.Status()
	if st.Counters.FlowsReceived != 1 || st.Counters.ConfigsReceived != 1 {
		t.Errorf("counters %+v", st.Counters)
	}
}

func TestQueueDrops(t *testing.T) {
	n := offlineNode(t, Options{QueueLen: 2})
	n.state = StateActive
	s := &session{n: n, peer: testPeer, queue: make(chan []FlowRecord, 2), cfg: make(chan struct{}, 1),
		resnap: make(chan struct{}, 1), redial: make(chan struct{}, 1), cancel: func() {}}
	n.sessions[testPeer] = s
	batch := make([]FlowRecord, 10)
	n.SendFlows(batch) // not connected yet: the snapshot will cover it
	if len(s.queue) != 0 || n.Status().Counters.FlowsDropped != 0 {
		t.Fatalf("queued %d batches for a peer not connected", len(s.queue))
	}
	s.connected.Store(true)
	for range 3 {
		n.SendFlows(batch)
	}
	if got := n.Status().Counters.FlowsDropped; got != 10 {
		t.Errorf("dropped %d records, want 10", got)
	}
	select {
	case <-s.resnap:
	default:
		t.Error("a drop did not ask for a fresh snapshot")
	}
	n.state = StateStandby
	n.SendFlows(batch)
	if len(s.queue) != 2 || n.Status().Counters.FlowsDropped != 10 {
		t.Error("a standby queued or dropped flows")
	}
}

func TestValidate(t *testing.T) {
	good := Config{Self: testSelf, Peers: []netip.AddrPort{testPeer}, Key: testKey, VIPs: []netip.Addr{netip.MustParseAddr("198.51.100.100")}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.Self = netip.AddrPort{} },
		func(c *Config) { c.Self = netip.MustParseAddrPort("0.0.0.0:7400") },
		func(c *Config) { c.Peers = nil },
		func(c *Config) { c.Peers = []netip.AddrPort{testSelf} },
		func(c *Config) { c.Peers = []netip.AddrPort{testPeer, testPeer} },
		func(c *Config) { c.Key = []byte("short") },
		func(c *Config) { c.VIPs = nil },
		func(c *Config) { c.VIPs = []netip.Addr{netip.MustParseAddr("ff02::1")} },
		func(c *Config) { c.Interval, c.DeadAfter = time.Second, time.Second },
	}
	for i, f := range bad {
		c := good
		f(&c)
		if err := c.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("case %d: %v, want ErrBadConfig", i, err)
		}
	}
}
