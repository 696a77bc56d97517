package ha

import (
	"bufio"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestRefreshSchedule: closing flows are refreshed every closing period,
// every flow every full period; each round asks for what carried packets
// since the round of its kind before, the first since the snapshot.
func TestRefreshSchedule(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	est, cl := time.Second, 250*time.Millisecond
	var rs refreshSchedule
	rs.reset(t0)
	if _, ok := rs.next(at(100), est, cl); ok {
		t.Fatal("a round 100 ms after the snapshot")
	}
	r, ok := rs.next(at(250), est, cl)
	if !ok || !r.ClosingOnly || !r.ClosingSince.Equal(t0) {
		t.Fatalf("at 250 ms: %+v %v, want a closing round since the snapshot", r, ok)
	}
	for _, ms := range []int{500, 750} {
		if r, ok := rs.next(at(ms), est, cl); !ok || !r.ClosingOnly || !r.ClosingSince.Equal(at(ms-250)) {
			t.Fatalf("at %d ms: %+v %v", ms, r, ok)
		}
	}
	r, ok = rs.next(at(1000), est, cl)
	if !ok || r.ClosingOnly || !r.Since.Equal(t0) || !r.ClosingSince.Equal(at(750)) {
		t.Fatalf("at 1 s: %+v %v, want a full round since the snapshot", r, ok)
	}
	if r, ok := rs.next(at(2000), est, cl); !ok || r.ClosingOnly || !r.Since.Equal(at(1000)) {
		t.Fatalf("at 2 s: %+v %v", r, ok)
	}
	if _, ok := rs.next(at(9000), 0, 0); ok {
		t.Error("a round with refreshing off")
	}
	if w := rs.wait(0, 0); w != idleWait {
		t.Errorf("wait with refreshing off: %v", w)
	}

	now := at(3000)
	round := RefreshRound{Since: at(2000), ClosingSince: at(2750)}
	est, closing := round.Windows(now)
	if est != 1100*time.Millisecond || closing != 350*time.Millisecond {
		t.Errorf("windows %v %v, want 1.1s and 350ms (100ms of slack for the clocks)", est, closing)
	}
	round.ClosingOnly = true
	if est, closing := round.Windows(now); est >= 0 || closing != 350*time.Millisecond {
		t.Errorf("closing round's windows %v %v", est, closing)
	}
}

// TestRefreshPeriods: the closing period never exceeds the other, both are
// off without a callback, and periods under MinRefresh are refused.
func TestRefreshPeriods(t *testing.T) {
	n := offlineNode(t, Options{Refresh: func(RefreshRound, func(FlowRecord) bool) error { return nil }})
	for _, c := range []struct{ est, cl, wantEst, wantCl time.Duration }{
		{time.Second, 0, time.Second, time.Second},
		{time.Second, 2 * time.Second, time.Second, time.Second},
		{time.Second, 250 * time.Millisecond, time.Second, 250 * time.Millisecond},
		{0, 250 * time.Millisecond, 0, 0},
	} {
		if err := n.SetRefresh(c.est, c.cl); err != nil {
			t.Fatal(err)
		}
		if est, cl := n.refreshPeriods(); est != c.wantEst || cl != c.wantCl {
			t.Errorf("SetRefresh(%v, %v): periods %v %v, want %v %v", c.est, c.cl, est, cl, c.wantEst, c.wantCl)
		}
	}
	if err := n.SetRefresh(time.Millisecond, 0); err == nil {
		t.Error("a 1 ms refresh was taken")
	}
	off := offlineNode(t, Options{})
	off.refresh = [2]time.Duration{time.Second, time.Second}
	if est, _ := off.refreshPeriods(); est != 0 {
		t.Errorf("refresh %v without a callback", est)
	}
}

// discardConn is a connection that takes every write.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error)      { return len(b), nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }

// refreshRecords are n IPv4 records as a refresh round sends them.
func refreshRecords(n int) []FlowRecord {
	recs := make([]FlowRecord, n)
	for i := range recs {
		recs[i] = FlowRecord{
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)}), uint16(30000+i)),
			VIP:    netip.MustParseAddrPort("198.51.100.100:80"),
			Proto:  6,
			Server: netip.MustParseAddr("198.51.100.11"),
		}
	}
	return recs
}

// BenchmarkRefreshSend: the active's cost of sending a refresh round of
// 1,000 IPv4 flows, encoding and HMAC included (the table's read is
// BenchmarkShadowRefresh's), and its size on the wire (bytes/round).
func BenchmarkRefreshSend(b *testing.B) {
	recs := refreshRecords(1000)
	n := offlineNode(b, Options{Refresh: func(_ RefreshRound, yield func(FlowRecord) bool) error {
		for _, r := range recs {
			if !yield(r) {
				break
			}
		}
		return nil
	}})
	w := &frameWriter{n: n, conn: discardConn{}, bw: bufio.NewWriterSize(discardConn{}, 64<<10)}
	for b.Loop() {
		if err := w.refresh(RefreshRound{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n.c.bytesOut.Load())/float64(n.c.refrRounds.Load()), "bytes/round")
}

// BenchmarkRefreshReceive: the standby's cost of checking and decoding a
// refresh round of 1,000 IPv4 flows (the upserts are BenchmarkShadowRefresh's).
func BenchmarkRefreshReceive(b *testing.B) {
	frame := newPeerFrames()
	payload := appendFlows(nil, refreshRecords(1000))
	n := offlineNode(b, Options{})
	// Each frame is accepted once (replays are refused): seal a supply
	// ahead, outside the timing.
	var frames [][]byte
	for b.Loop() {
		if len(frames) == 0 {
			b.StopTimer()
			for range 1024 {
				frames = append(frames, frame.frame(msgFlows, chanStream, payload))
			}
			b.StartTimer()
		}
		if _, err := n.handleFrame(frames[0], netip.AddrPort{}); err != nil {
			b.Fatal(err)
		}
		frames = frames[1:]
	}
}
