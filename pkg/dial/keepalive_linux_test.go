package dial_test

import (
	"context"
	"net"
	"syscall"
	"testing"

	"github.com/tandem-migrate/tandem/pkg/dial"
)

// TestKeepAlive: tandem's sockets probe an idle peer after 30s, not after
// the kernel's default two hours.
func TestKeepAlive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := dial.Config("postgres://tandem@"+ln.Addr().String()+"/shop", dial.Short("m", "poll"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cc.DialFunc(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on, idle, intvl, cnt int
	var serr error
	err = raw.Control(func(fd uintptr) {
		get := func(level, opt int) int {
			v, err := syscall.GetsockoptInt(int(fd), level, opt)
			if err != nil && serr == nil {
				serr = err
			}
			return v
		}
		on = get(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		idle = get(syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		intvl = get(syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL)
		cnt = get(syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT)
	})
	if err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if on == 0 || idle != 30 || intvl != 10 || cnt != 3 {
		t.Fatalf("keepalive on=%d idle=%ds interval=%ds count=%d; want on, 30s, 10s, 3", on, idle, intvl, cnt)
	}
}
