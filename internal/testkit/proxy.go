package testkit

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy between tandem and a database, for fault tests: it
// can cut every connection at once (Reset) and make the link silent
// without closing anything (Blackhole), the failure a dropped route or a
// dead NAT entry causes and the one only application deadlines detect.
//
// Connect through it with Rewrite(dsn). Connections opened while the link
// is blackholed are accepted (the local kernel completes the handshake)
// but carry nothing until it is restored, like a SYN retransmitted into a
// partition that heals. The proxy is closed when the test ends.
type Proxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu     sync.Mutex
	links  map[*link]struct{}
	open   chan struct{} // closed while bytes flow; a fresh one while blackholed
	closed bool
	wg     sync.WaitGroup
}

// link is one proxied connection.
type link struct {
	client, server net.Conn
	done           chan struct{}
	once           sync.Once
}

// NewProxy listens on 127.0.0.1 (a free port) and forwards to target
// ("host:port").
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: listen: %v", err)
	}
	p := &Proxy{t: t, ln: ln, target: target, links: map[*link]struct{}{}, open: make(chan struct{})}
	close(p.open)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port is the proxy's listening port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Rewrite returns dsn with the target's host:port (as given to NewProxy)
// replaced by the proxy's address.
func (p *Proxy) Rewrite(dsn string) string {
	if !strings.Contains(dsn, p.target) {
		p.t.Fatalf("proxy: DSN %q does not name %s", dsn, p.target)
	}
	return strings.Replace(dsn, p.target, p.Addr(), 1)
}

// Reset closes every open connection, both sides, with a reset (as a
// restarted firewall or a crashed middlebox does). New connections are
// accepted as before.
func (p *Proxy) Reset() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	servers := make([]net.Conn, len(links))
	for i, l := range links {
		servers[i] = l.server
	}
	p.mu.Unlock()
	for i, l := range links {
		l.abort(servers[i])
	}
}

// Blackhole stops (on) or resumes (off) every byte in both directions on
// every connection, open or new, closing none. Bytes sent meanwhile wait
// and are delivered when the link is restored, as TCP would retransmit
// them; a side that closed meanwhile is closed on the other side then.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open: // flowing
		if on {
			p.open = make(chan struct{})
		}
	default: // blackholed
		if !on {
			close(p.open)
		}
	}
}

// Conns is the number of connections open through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Close stops listening and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Reset()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.t.Logf("proxy %s: accept: %v", p.Addr(), err)
			}
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	l := &link{client: client, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		client.Close()
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
	}()
	// While blackholed, not even the upstream connection is made: the
	// server must not see a session the client cannot reach.
	if !p.wait(l) {
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		l.close() // the database is down: refuse, as it would
		return
	}
	p.mu.Lock()
	l.server = server
	p.mu.Unlock()
	select {
	case <-l.done: // reset while dialling
		server.Close()
		return
	default:
	}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); p.pipe(l, client, server) }()
	go func() { defer pipes.Done(); p.pipe(l, server, client) }()
	pipes.Wait()
}

// wait blocks while the link is blackholed; false when the link was reset
// meanwhile.
func (p *Proxy) wait(l *link) bool {
	for {
		p.mu.Lock()
		open := p.open
		p.mu.Unlock()
		select {
		case <-open:
			// Blackhole may have been switched on and off meanwhile.
			p.mu.Lock()
			still := open == p.open
			p.mu.Unlock()
			if still {
				return true
			}
		case <-l.done:
			return false
		}
	}
}

// pipe copies src to dst, holding bytes while blackholed.
func (p *Proxy) pipe(l *link, src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !p.wait(l) {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				l.close()
				return
			}
		}
		if err != nil {
			l.close()
			return
		}
	}
}

// close ends both sides gracefully (FIN). Only the link's own pipes call
// it, after server is set.
func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		l.client.Close()
		if l.server != nil {
			l.server.Close()
		}
	})
}

// abort ends both sides with a reset (RST); server is the link's server
// side as read under the proxy's lock (nil before it is dialled).
func (l *link) abort(server net.Conn) {
	l.once.Do(func() {
		close(l.done)
		for _, c := range []net.Conn{l.client, server} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			c.Close()
		}
	})
}

// ProxyTarget is the host:port of a cluster listening on port, as its
// DSN names it.
func ProxyTarget(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
