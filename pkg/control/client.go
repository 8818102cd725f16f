package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-migrate/tandem/pkg/backfill"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// State is what the daemon answers to every control request: the limits
// in force and why the copy is held back, if it is.
type State struct {
	backfill.Limits
	Throttled string `json:"throttled,omitempty"`
}

// Client talks to one running `tandem run`.
type Client struct {
	http  *http.Client
	base  string
	token string
	// Where is what the client connected to, for messages.
	Where string
}

// Target says where to reach the daemon; empty fields come from the config.
type Target struct {
	Socket string // a socket path
	Addr   string // a TCP host:port (control.listen); needs the token
}

// NewClient finds the daemon for cfg: the socket it would have created
// (any of the default places, see ClientSockets), else control.listen
// with the token from control.token_file.
func NewClient(cfg *config.Config, t Target) (*Client, error) {
	if t.Socket == "" && t.Addr == "" {
		for _, p := range ClientSockets(cfg.Control.Socket, cfg.Name) {
			if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
				t.Socket = p
				break
			}
		}
	}
	if t.Socket == "" && t.Addr == "" {
		t.Addr = cfg.Control.Listen
	}
	switch {
	case t.Socket != "":
		path := t.Socket
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}
		return &Client{http: &http.Client{Transport: tr, Timeout: 10 * time.Second}, base: "http://tandem", Where: "control socket " + path}, nil
	case t.Addr != "":
		if cfg.Control.TokenFile == "" {
			return nil, fmt.Errorf("control.token_file: required to reach %s over TCP (the daemon refuses requests without its token)", t.Addr)
		}
		token, err := ReadToken(cfg.Control.TokenFile)
		if err != nil {
			return nil, err
		}
		return &Client{http: &http.Client{Timeout: 10 * time.Second}, base: "http://" + t.Addr, token: token, Where: "control.listen " + t.Addr}, nil
	}
	return nil, fmt.Errorf("no control socket for migration %q (looked in %s): is `tandem run` running for it on this host? "+
		"If it runs elsewhere, set control.listen and control.token_file, or pass --socket", cfg.Name, strings.Join(ClientSockets(cfg.Control.Socket, cfg.Name), ", "))
}

// Get returns the limits in force.
func (c *Client) Get(ctx context.Context) (State, error) {
	return c.do(ctx, http.MethodGet, nil)
}

// Change sends a change (pause, resume, chunk_rows=...) and returns the
// limits in force after it.
func (c *Client) Change(ctx context.Context, form url.Values) (State, error) {
	return c.do(ctx, http.MethodPost, form)
}

func (c *Client) do(ctx context.Context, method string, form url.Values) (State, error) {
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+Path, body)
	if err != nil {
		return State{}, err
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return State{}, c.explain(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return State{}, fmt.Errorf("%s refused the request (%s): %s", c.Where, resp.Status, strings.TrimSpace(string(b)))
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("%s: unexpected answer: %v", c.Where, err)
	}
	return s, nil
}

func (c *Client) explain(err error) error {
	switch {
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%s: permission denied: the socket is mode 0600, so run this as the user tandem runs as (e.g. sudo -u tandem tandem backfill ...)", c.Where)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%s: nothing answers (%v): is `tandem run` still running?", c.Where, err)
	}
	return fmt.Errorf("%s: %w", c.Where, err)
}
