package main

import (
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// Bounds of a server connection.
const (
	serverIdle   = 5 * time.Second // from accept to the end of the reply
	maxRequest   = 512             // bytes of request read at most
	servicePort  = 80
	requestLine  = "GET / HTTP/1.0\r\nHost: nd-bench\r\n\r\n"
	replyStatus  = "HTTP/1.0 200 OK\r\n"
	headerEnding = "\r\n\r\n"
)

// acceptors is the number of listeners, sharing each address through
// SO_REUSEPORT, and so of accept loops, of each server. With one, a single
// server saturated at about half the rate four servers took in the same
// process: direct and trivial measured the accept loop, not the path.
const acceptors = 4

// server is the application of one lab server: on each of its addresses it
// reads one small HTTP request per connection, answers with its name as the
// body and closes. It is deliberately minimal, so that its own cost, which
// every configuration pays alike, weighs little against what is measured.
type server struct {
	name  string
	reply []byte
	listeners
}

// startServer listens on every address in host's namespace.
func startServer(host *lab.Host, addrs ...netip.AddrPort) (*server, error) {
	body := host.Name + "\n"
	s := &server{
		name: host.Name,
		reply: []byte(replyStatus + "Content-Type: text/plain\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body),
	}
	if err := s.listen(host, acceptors, s.serve, addrs...); err != nil {
		return nil, err
	}
	return s, nil
}

// serve reads the request up to the end of its header and answers it. The
// server closes first; the client's close then resets the connection, so
// that neither side keeps it in TIME_WAIT.
func (s *server) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(serverIdle))
	if _, ok := readHeader(c, maxRequest); ok {
		c.Write(s.reply)
	}
}

// startServers starts one server per lab server, each on its own address
// and on the VIP, at servicePort.
func startServers(l *lab.Lab) ([]*server, error) {
	var out []*server
	for i := range l.Servers {
		h := &l.Servers[i]
		s, err := startServer(h, netip.AddrPortFrom(h.Addr4, servicePort), netip.AddrPortFrom(l.VIP4, servicePort))
		if err != nil {
			stopServers(out)
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func stopServers(ss []*server) {
	for _, s := range ss {
		s.Stop()
	}
}
