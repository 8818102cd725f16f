package control

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-migrate/tandem/pkg/config"
)

// Path is where the backfill controls are served, on the socket and on
// the TCP listener alike.
const Path = "/backfill"

// Server is the control surface of one `tandem run`.
type Server struct {
	socket  string // "" when there is no socket
	servers []served
	log     *slog.Logger
}

// served is one listener and the server answering on it: the socket's
// needs no token (its file mode guards it), the TCP listener's does.
type served struct {
	ln  net.Listener
	srv *http.Server
}

// Listen opens the control surface for cfg: the unix socket (mode 0600)
// and, with control.listen, a TCP listener that requires the token in
// control.token_file. It refuses a socket that a live process is serving,
// since that is another tandem for this migration (or another
// migration given the same path), and removes one left by a killed
// daemon. When no default socket directory can be used it goes on
// without a socket, with a warning: SIGHUP still reloads the limits.
func Listen(cfg *config.Config, backfill http.Handler, log *slog.Logger) (*Server, error) {
	s := &Server{log: log}
	mux := http.NewServeMux()
	mux.Handle(Path, backfill)
	path, err := DaemonSocket(cfg.Control.Socket, cfg.Name)
	switch {
	case errors.Is(err, ErrNoSocketDir):
		log.Warn("no control socket: `tandem backfill` cannot reach this daemon (SIGHUP still reloads the backfill limits)", "err", err)
	case err != nil:
		return nil, err
	default:
		ln, err := listenSocket(path, cfg.Name)
		if err != nil {
			return nil, err
		}
		s.socket = path
		s.add(ln, mux)
	}
	if cfg.Control.Listen != "" {
		token, err := ReadToken(cfg.Control.TokenFile)
		if err != nil {
			s.Close()
			return nil, err
		}
		ln, err := net.Listen("tcp", cfg.Control.Listen)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("control.listen %s: %w", cfg.Control.Listen, err)
		}
		s.add(ln, requireToken(mux, token))
	}
	return s, nil
}

func (s *Server) add(ln net.Listener, h http.Handler) {
	s.servers = append(s.servers, served{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}})
}

// Socket is the socket's path, "" when there is none.
func (s *Server) Socket() string { return s.socket }

// Addrs are the addresses served: the socket's path, then the TCP
// listener's host:port.
func (s *Server) Addrs() []string {
	var out []string
	for _, sv := range s.servers {
		out = append(out, sv.ln.Addr().String())
	}
	return out
}

// Serve answers requests until ctx ends, then closes the listeners, which
// removes the socket file.
func (s *Server) Serve(ctx context.Context) error {
	defer s.Close()
	errc := make(chan error, len(s.servers))
	for _, sv := range s.servers {
		s.log.Info("control listening", "addr", sv.ln.Addr().String())
		go func() { errc <- sv.srv.Serve(sv.ln) }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return fmt.Errorf("control: %w", err)
	}
}

// Close stops serving and removes the socket. It may be called more than
// once.
func (s *Server) Close() {
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, sv := range s.servers {
		_ = sv.srv.Shutdown(sctx)
		_ = sv.ln.Close() // for a listener Serve never got to
	}
}

// listenSocket creates the socket at path with mode 0600, after making
// sure no live process serves it.
func listenSocket(path, name string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control.socket: %s exists and is not a socket: remove it or set control.socket to another path", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("control.socket: %s is served by a running process, most likely another `tandem run` for migration %q: stop that one first, or give this migration its own name or control.socket", path, name)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("control.socket: %s exists and cannot be checked (%v): remove it if no tandem is running", path, err)
		}
		// Left by a daemon that was killed: nobody listens.
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("control.socket: remove the stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control.socket %s: %w", path, err)
	}
	// Only this user may connect: whoever can connect can pause the copy
	// or lift its rate limit.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control.socket %s: chmod 0600: %w", path, err)
	}
	return ln, nil
}

// ReadToken reads the bearer token (surrounding whitespace dropped).
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("control.token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("control.token_file: %s is empty: put a long random token in it (e.g. openssl rand -hex 32 > %s)", path, path)
	}
	return tok, nil
}

func requireToken(next http.Handler, token string) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tandem"`)
			http.Error(w, "a bearer token is required: Authorization: Bearer <the token in control.token_file>", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
