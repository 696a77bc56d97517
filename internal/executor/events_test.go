package executor

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"
)

// eventSink collects what a FlowEvents channel delivers, in a goroutine
// that ends with the channel.
type eventSink struct {
	mu     sync.Mutex
	events []FlowEvent
	ended  chan struct{}
}

func sink(ch <-chan []FlowEvent) *eventSink {
	s := &eventSink{ended: make(chan struct{})}
	go func() {
		defer close(s.ended)
		for batch := range ch {
			s.mu.Lock()
			s.events = append(s.events, batch...)
			s.mu.Unlock()
		}
	}()
	return s
}

// take waits until the sink holds at least n events, or 3 s, and returns
// and forgets them all. Idle is zeroed: it depends on when they were read.
func (s *eventSink) take(n int) []FlowEvent { return s.takeWithin(n, 3*time.Second) }

func (s *eventSink) takeWithin(n int, wait time.Duration) []FlowEvent {
	deadline := time.Now().Add(wait)
	for {
		s.mu.Lock()
		if len(s.events) >= n || time.Now().After(deadline) {
			out := s.events
			s.events = nil
			s.mu.Unlock()
			for i := range out {
				out[i].Flow.Idle = 0
			}
			return out
		}
		s.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

// quiet waits a moment and fails if anything more arrived.
func (s *eventSink) quiet(t *testing.T, what string) {
	t.Helper()
	time.Sleep(100 * time.Millisecond)
	if extra := s.take(0); len(extra) != 0 {
		t.Fatalf("%s: unexpected events %+v", what, extra)
	}
}

// wantLoss reads what the sink receives until it is quiet for 300 ms and
// fails unless some events were lost and those delivered and lost make n.
func (s *eventSink) wantLoss(t *testing.T, lost uint64, n int) {
	t.Helper()
	var got int
	for {
		batch := s.takeWithin(1, 300*time.Millisecond)
		if len(batch) == 0 {
			break
		}
		got += len(batch)
	}
	t.Logf("%d events delivered, %d lost", got, lost)
	if lost == 0 || uint64(got)+lost != uint64(n) {
		t.Fatalf("%d events delivered, %d lost, want a loss and %d in all", got, lost, n)
	}
}

func (s *eventSink) waitEnded(t *testing.T) {
	t.Helper()
	select {
	case <-s.ended:
	case <-time.After(3 * time.Second):
		t.Fatal("the events channel was not closed")
	}
}

func TestFlowEventDecode(t *testing.T) {
	if n := binary.Size(dispatchFlowEvent{}); n != flowEventSize {
		t.Fatalf("struct flow_event is %d bytes, the decoder reads %d", n, flowEventSize)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100 {
		var ev dispatchFlowEvent
		for i := range 4 {
			ev.Key.Src.Addr[i], ev.Key.Dst.Addr[i], ev.Server.Addr[i] = rng.Uint32(), rng.Uint32(), rng.Uint32()
		}
		ev.Key.Sport, ev.Key.Dport = uint16(rng.Uint32()), uint16(rng.Uint32())
		ev.Key.Proto, ev.Key.Family = uint8(rng.Uint32()), uint8(rng.Uint32())
		ev.Ts, ev.Backend, ev.Gen = rng.Uint64(), rng.Uint32(), rng.Uint32()
		ev.Kind, ev.Flags = uint8(rng.Uint32()), uint8(rng.Uint32())
		raw, err := binary.Append(nil, binary.NativeEndian, ev)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := decodeFlowEvent(raw); !ok || got != ev {
			t.Fatalf("decoded %+v, want %+v", got, ev)
		}
	}
	if _, ok := decodeFlowEvent(make([]byte, flowEventSize-1)); ok {
		t.Fatal("a short record decoded")
	}
	bad := dispatchFlowEvent{Kind: 9}
	bad.Key.Family = afInet
	if _, ok := flowEventFrom(&bad, 0); ok {
		t.Fatal("an unknown kind was accepted")
	}
}

// flowEventScript is what both implementations must report for the packets
// of flowEventPackets: a new flow, its close (once), a flow first seen
// closing, and a reused tuple.
func flowEventScript(send sendFn, key ServiceKey) ([]FlowEvent, error) {
	k := func(p uint16) FlowKey { return fkFlow(key, fkClient, p) }
	var want []FlowEvent
	for _, step := range []struct {
		port  uint16
		flags uint8
		kind  FlowEventKind // 0: no event
	}{
		{1, tcpSYN, 0},          // half-open: not reported
		{1, tcpACK, FlowOpened}, // established
		{1, tcpACK | tcpFIN, FlowClosed},
		{1, tcpACK | tcpFIN, 0}, // retransmitted: reported once
		{2, tcpRST, 0},          // a close of an unknown flow: nothing recorded
		{1, tcpSYN, 0},          // reuses the closed tuple, half-open
		{1, tcpACK, FlowOpened},
		{3, tcpACK, 0},          // mid-flow, no entry: recorded half-open
		{3, tcpACK, FlowOpened}, // and established by its next packet
	} {
		srv, err := send(k(step.port), step.flags)
		if err != nil {
			return nil, err
		}
		if step.kind != 0 {
			closing := step.flags&(tcpFIN|tcpRST) != 0
			want = append(want, FlowEvent{Kind: step.kind, Flow: Flow{Key: k(step.port), Server: srv, Closing: closing}})
		}
	}
	return want, nil
}

func TestFakeFlowEvents(t *testing.T) {
	p2c := ServiceKey{VIP: fkVIP, Port: 8000, Proto: TCP}
	f := fkNew(t,
		Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1), fkServer(fkS2, 1)}},
		Service{Key: p2c, Scheduler: SchedulerP2C, Servers: []Server{fkServer(fkS3, 1), fkServer(fkS4, 1)}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := f.FlowEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.FlowEvents(ctx); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second subscriber: %v, want ErrBusy", err)
	}
	s := sink(ch)
	for _, key := range []ServiceKey{fkHTTP, p2c} {
		want, err := flowEventScript(fakeSend(f), key)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.take(len(want)); !reflect.DeepEqual(got, want) {
			t.Fatalf("%v: events\n got %+v\nwant %+v", key, got, want)
		}
	}
	if err := f.UpsertFlows([]Flow{{Key: fkFlow(fkHTTP, fkClient, 9), Server: fkS1}}); err != nil {
		t.Fatal(err)
	}
	s.quiet(t, "after learning a flow")

	// Off: nothing is reported, and nothing old is delivered later.
	cancel()
	s.waitEnded(t)
	fkDispatch(t, f, fkFlow(fkHTTP, fkClient, 100), true, false)
	fkDispatch(t, f, fkFlow(fkHTTP, fkClient, 100), false, false)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	ch, err = f.FlowEvents(ctx)
	if err != nil {
		t.Fatalf("subscribing again: %v", err)
	}
	s = sink(ch)
	fkDispatch(t, f, fkFlow(fkHTTP, fkClient, 101), true, false)
	fkDispatch(t, f, fkFlow(fkHTTP, fkClient, 101), false, false)
	if got := s.take(1); len(got) != 1 || got[0].Flow.Key.Client.Port() != 101 {
		t.Fatalf("after subscribing again: %+v, want only the flow of port 101", got)
	}

	// A subscriber that does not read: the queue fills, the rest is
	// counted lost, nothing is blocked.
	f2 := fkNew(t, Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1)}})
	ch2, err := f2.FlowEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2*FakeFlowEventsQueue + 100
	for _, k := range fkManyFlows(fkHTTP, n) {
		fkDispatch(t, f2, k, true, false)
		fkDispatch(t, f2, k, false, false)
	}
	lost := fkStats(t, f2).Global.FlowEventsLost
	sink(ch2).wantLoss(t, lost, n)

	// Close ends the subscription.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s.waitEnded(t)
}

func TestFlowEvents(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16, FlowEventsRing: 4096})
	maglevKey := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	p2c := ServiceKey{VIP: vip4, Port: 81, Proto: TCP}
	h.upsert(Service{Key: maglevKey, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	h.upsert(h.p2cService(p2c, 1, 1, 1))
	send := h.rawSend()
	script := func(key ServiceKey) []FlowEvent {
		t.Helper()
		var want []FlowEvent
		h.do(func() error {
			var err error
			want, err = flowEventScript(send, key)
			return err
		})
		return want
	}
	on := func() uint32 {
		t.Helper()
		var v uint32
		if err := h.x.objs.FlowEventsOn.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := h.x.FlowEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.x.FlowEvents(ctx); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second subscriber: %v, want ErrBusy", err)
	}
	if on() != 1 {
		t.Fatal("reporting is off with a subscriber")
	}
	s := sink(ch)
	for _, key := range []ServiceKey{maglevKey, p2c} {
		want := script(key)
		if got := s.take(len(want)); !reflect.DeepEqual(got, want) {
			t.Fatalf("%v: events\n got %+v\nwant %+v", key, got, want)
		}
		// Each event names the server the table holds.
		for _, ev := range want {
			if fl, ok, err := h.x.LookupFlow(ev.Flow.Key); err != nil || !ok || fl.Server != ev.Flow.Server {
				t.Fatalf("%v: table holds %+v %v %v, event said %v", ev.Flow.Key, fl, ok, err, ev.Flow.Server)
			}
		}
	}
	if err := h.x.UpsertFlows([]Flow{{Key: fkFlow(maglevKey, fkClient, 9), Server: s1}}); err != nil {
		t.Fatal(err)
	}
	s.quiet(t, "after learning a flow")

	// Off: the switch is cleared, nothing is reported, and a new
	// subscriber sees only what came after it.
	cancel()
	s.waitEnded(t)
	if on() != 0 {
		t.Fatal("reporting still on after the subscriber left")
	}
	h.dispatch(tcp4(100, 80, tcpSYN).build())
	h.dispatch(tcp4(100, 80, tcpACK).build())
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	if ch, err = h.x.FlowEvents(ctx); err != nil {
		t.Fatalf("subscribing again: %v", err)
	}
	s = sink(ch)
	h.dispatch(tcp4(101, 80, tcpSYN).build())
	h.dispatch(tcp4(101, 80, tcpACK).build())
	if got := s.take(1); len(got) != 1 || got[0].Flow.Key.Client.Port() != 101 {
		t.Fatalf("after subscribing again: %+v, want only the flow of port 101", got)
	}
	if lost := h.stats().Global.FlowEventsLost; lost != 0 {
		t.Fatalf("%d events lost with a subscriber that keeps up", lost)
	}

	// A subscriber that does not read: the 4 KiB ring fills, the rest is
	// counted lost, and every packet is still forwarded.
	cancel()
	s.waitEnded(t)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	if ch, err = h.x.FlowEvents(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 3000
	h.do(func() error {
		for i := range n {
			client := netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 200)})
			for _, flags := range []uint8{tcpSYN, tcpACK} {
				if _, err := send(fkFlow(maglevKey, client, uint16(2000+i)), flags); err != nil {
					return err
				}
			}
		}
		return nil
	})
	lost := h.stats().Global.FlowEventsLost
	s = sink(ch)
	s.wantLoss(t, lost, n)

	// Close ends the subscription and turns reporting off.
	if err := h.x.Close(); err != nil {
		t.Fatal(err)
	}
	s.waitEnded(t)
}

func TestFlowEventsRingSize(t *testing.T) {
	for _, n := range []uint32{1000, 5000, 3 << 12} {
		c := Config{FlowEventsRing: n}
		if err := c.fill(); !errors.Is(err, ErrInvalid) {
			t.Errorf("ring of %d bytes: %v, want ErrInvalid", n, err)
		}
	}
	c := Config{}
	if err := c.fill(); err != nil || c.FlowEventsRing != 1<<20 {
		t.Fatalf("default ring: %d bytes, %v", c.FlowEventsRing, err)
	}
}

// TestUDPFlowReportedAtSecondDatagram: a UDP flow is counted open at its
// first datagram but reported (to the HA peers) at its second, so that
// spoofed datagrams, which never send a second, cost the flow stream
// nothing.
func TestUDPFlowReportedAtSecondDatagram(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 12})
	key := ServiceKey{VIP: vip4, Port: 53, Proto: UDP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := h.x.FlowEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := sink(ch)
	datagram := func(src netip.Addr, sport uint16) []byte {
		return frame{dstMAC: macIn, srcMAC: macClient, src: src, dst: vip4, proto: 17, sport: sport, dport: 53, payload: []byte("q")}.build()
	}
	before := h.stats().Services[key]
	for i := range 100 {
		if act, _ := h.dispatch(datagram(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 5000)); act != xdpTX {
			t.Fatalf("datagram %d: %s", i, actionNames[act])
		}
	}
	s.quiet(t, "after 100 single datagrams")
	var opened uint64
	for _, c := range h.stats().Services[key].Servers {
		opened += c.NewFlows
	}
	for _, c := range before.Servers {
		opened -= c.NewFlows
	}
	if opened != 100 {
		t.Errorf("%d new flows counted for 100 first datagrams", opened)
	}
	for range 3 {
		h.dispatch(datagram(client4, 6000))
	}
	got := s.take(1)
	if len(got) != 1 || got[0].Kind != FlowOpened || got[0].Flow.Key.Client != netip.AddrPortFrom(client4, 6000) || got[0].Flow.Key.Proto != UDP {
		t.Fatalf("events for a flow of three datagrams: %+v, want one opened", got)
	}
	s.quiet(t, "after the flow's third datagram")

	// Refresh rounds and snapshots leave the single datagrams out too.
	var recent, once int
	if err := h.x.RecentFlows(time.Minute, time.Minute, func(Flow) bool { recent++; return true }); err != nil {
		t.Fatal(err)
	}
	if err := h.x.Flows(func(f Flow) bool {
		if f.Once {
			once++
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if recent != 1 || once != 100 {
		t.Errorf("%d recent flows (want the one of three datagrams), %d flows seen once (want 100)", recent, once)
	}
}
