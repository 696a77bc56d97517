package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Proc reads host metrics from a procfs tree. Root is normally "/proc";
// tests point it at sample files.
type Proc struct {
	Root string
}

// maxProcFile bounds the small /proc files read whole.
const maxProcFile = 1 << 20

func (p Proc) path(name string) string { return filepath.Join(p.Root, name) }

func (p Proc) readSmall(name string) ([]byte, error) {
	f, err := os.Open(p.path(name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProcFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p.path(name), err)
	}
	if len(b) > maxProcFile {
		return nil, fmt.Errorf("read %s: larger than %d bytes", p.path(name), maxProcFile)
	}
	return b, nil
}

// Load1 returns the 1-minute load average, the first field of loadavg.
func (p Proc) Load1() (float64, error) {
	b, err := p.readSmall("loadavg")
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(b))
	if len(fields) < 1 {
		return 0, fmt.Errorf("%s: empty", p.path("loadavg"))
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || !finite(v) || v < 0 {
		return 0, fmt.Errorf("%s: bad load average %q", p.path("loadavg"), fields[0])
	}
	return v, nil
}

// Memory returns the memory in use, in percent of MemTotal, counting
// MemAvailable (free plus reclaimable) as not in use.
func (p Proc) Memory() (float64, error) {
	b, err := p.readSmall("meminfo")
	if err != nil {
		return 0, err
	}
	var total, avail uint64
	var haveTotal, haveAvail bool
	for line := range strings.SplitSeq(string(b), "\n") {
		key, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "MemTotal":
			dst, haveTotal = &total, true
		case "MemAvailable":
			dst, haveAvail = &avail, true
		default:
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, fmt.Errorf("%s: %s has no value", p.path("meminfo"), key)
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: bad value %q", p.path("meminfo"), key, f[0])
		}
		*dst = v
	}
	switch {
	case !haveTotal:
		return 0, fmt.Errorf("%s: no MemTotal", p.path("meminfo"))
	case !haveAvail:
		return 0, fmt.Errorf("%s: no MemAvailable (kernel older than 3.14?)", p.path("meminfo"))
	case total == 0:
		return 0, fmt.Errorf("%s: MemTotal is 0", p.path("meminfo"))
	case avail > total:
		return 0, fmt.Errorf("%s: MemAvailable %d exceeds MemTotal %d", p.path("meminfo"), avail, total)
	}
	return 100 * float64(total-avail) / float64(total), nil
}

// CPUTimes is the aggregate "cpu" line of /proc/stat, in clock ticks.
type CPUTimes struct {
	Idle  uint64 // idle + iowait
	Total uint64 // every field except guest and guest_nice, which user and nice already include
}

// CPU reads the aggregate CPU times.
func (p Proc) CPU() (CPUTimes, error) {
	b, err := p.readSmall("stat")
	if err != nil {
		return CPUTimes{}, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq steal guest guest_nice
		if len(f) < 5 {
			return CPUTimes{}, fmt.Errorf("%s: cpu line has %d fields", p.path("stat"), len(f)-1)
		}
		var t CPUTimes
		for i, s := range f[1:] {
			if i >= 8 {
				break
			}
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return CPUTimes{}, fmt.Errorf("%s: cpu field %d: bad value %q", p.path("stat"), i+1, s)
			}
			t.Total += v
			if i == 3 || i == 4 {
				t.Idle += v
			}
		}
		return t, nil
	}
	return CPUTimes{}, fmt.Errorf("%s: no aggregate cpu line", p.path("stat"))
}

// errNoCPUChange is returned when two samples are the same instant to
// the kernel's clock, so no utilisation can be computed.
var errNoCPUChange = errors.New("no CPU time elapsed between samples")

// CPUBusy returns the percentage of CPU time not idle between two samples.
func CPUBusy(prev, cur CPUTimes) (float64, error) {
	if cur.Total < prev.Total || cur.Idle < prev.Idle {
		return 0, errors.New("CPU counters went backwards")
	}
	dt := cur.Total - prev.Total
	if dt == 0 {
		return 0, errNoCPUChange
	}
	di := cur.Idle - prev.Idle
	if di > dt {
		di = dt
	}
	return 100 * float64(dt-di) / float64(dt), nil
}

// TCPEstablished counts TCP sockets in state ESTABLISHED in net/tcp and
// net/tcp6. A missing net/tcp6 (IPv6 disabled) counts as none.
func (p Proc) TCPEstablished() (float64, error) {
	n4, err := p.countEstablished("net/tcp")
	if err != nil {
		return 0, err
	}
	n6, err := p.countEstablished("net/tcp6")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	return float64(n4 + n6), nil
}

// countEstablished streams the table: on a busy server it holds a line per
// socket, far too much to read whole.
func (p Proc) countEstablished(name string) (int, error) {
	f, err := os.Open(p.path(name))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	n := 0
	first := true
	for sc.Scan() {
		line := sc.Bytes()
		if first {
			first = false
			if !bytes.Contains(line, []byte("local_address")) {
				return 0, fmt.Errorf("%s: unexpected header %q", p.path(name), line)
			}
			continue
		}
		// "  sl  local_address rem_address   st ..." — st is the fourth field.
		f := bytes.Fields(line)
		if len(f) < 4 {
			if len(f) == 0 {
				continue
			}
			return 0, fmt.Errorf("%s: short line %q", p.path(name), line)
		}
		if string(f[3]) == "01" {
			n++
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", p.path(name), err)
	}
	return n, nil
}

// Processes counts the numeric entries of the procfs root, one a process.
func (p Proc) Processes() (float64, error) {
	d, err := os.Open(p.Root)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		for _, name := range names {
			if isDigits(name) {
				n++
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("list %s: %w", p.Root, err)
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("%s: no process entries (is it a procfs?)", p.Root)
	}
	return float64(n), nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
