package lab

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// disableChecksumOffload does `ethtool -K ifname rx off tx off` for an
// interface of the calling thread's namespace. Frames that XDP forwards
// between veths otherwise may carry checksums that were never filled in.
func disableChecksumOffload(ifname string) error {
	for _, cmd := range []uint32{unix.ETHTOOL_SRXCSUM, unix.ETHTOOL_STXCSUM} {
		if err := ethtoolSet(ifname, cmd, false); err != nil {
			return err
		}
	}
	return nil
}

// SetTxChecksum turns transmit checksum offload of an interface of the
// calling thread's namespace on or off (`ethtool -K IFNAME tx on|off`).
func SetTxChecksum(ifname string, on bool) error {
	return ethtoolSet(ifname, unix.ETHTOOL_STXCSUM, on)
}

// ethtoolSet runs one legacy ethtool "set" ioctl with a boolean value.
func ethtoolSet(ifname string, cmd uint32, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: cmd}
	if on {
		value.data = 1
	}
	// struct ifreq: the name, then a union whose ifr_data points at the
	// ethtool command.
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(&value)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("ethtool %#x %v on %s: %w", cmd, on, ifname, errno)
	}
	return nil
}
