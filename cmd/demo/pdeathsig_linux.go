package main

import "syscall"

// dieWithDemo asks the kernel to SIGTERM a child when the demo dies, even
// by kill -9: tandem then commits what it has and exits rather than
// outlive the demo. (The clusters are daemons and cannot be tied so;
// removeStale stops them at the next start.)
func dieWithDemo(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGTERM }
