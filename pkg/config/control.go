package config

import "strings"

// maxSocketPath is the longest path a unix socket may have (sun_path is
// 108 bytes on Linux and 104 on macOS, including the trailing NUL).
const maxSocketPath = 103

// validateControl checks the control surface. A TCP listener without a
// token would hand pause and rate changes to anyone who can reach the
// port, which is what moving the surface off the metrics listener is for.
func (c *Config) validateControl(add func(field, format string, args ...any)) {
	ctl := c.Control
	if len(ctl.Socket) > maxSocketPath {
		add("control.socket", "%q is %d bytes, longer than the %d a unix socket path may have: choose a shorter path", ctl.Socket, len(ctl.Socket), maxSocketPath)
	}
	if ctl.Socket != "" && strings.HasSuffix(ctl.Socket, "/") {
		add("control.socket", "%q is a directory: give the socket's file name, e.g. %s%s.sock", ctl.Socket, ctl.Socket, c.Name)
	}
	if ctl.Listen != "" && ctl.TokenFile == "" {
		add("control.listen", "set control.token_file too (a file holding the bearer token, mode 0600), or remove control.listen and use the unix socket: the control surface is never served on TCP without a token")
	}
	if ctl.TokenFile != "" && ctl.Listen == "" {
		add("control.token_file", "only used with control.listen: set control.listen (host:port) or remove control.token_file")
	}
}
