//go:build !linux

package main

import "syscall"

// dieWithDemo: only Linux can tie a child's life to its parent's; elsewhere
// removeStale stops what a killed demo left at the next start.
func dieWithDemo(*syscall.SysProcAttr) {}
