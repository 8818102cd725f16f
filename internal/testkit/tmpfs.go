package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strings"
	"testing"
	"time"
)

// Tmpfs is a small memory file system owned by the OS user PostgreSQL runs
// as, for a tablespace that runs out of space on demand (a full disk
// without filling the machine's).
type Tmpfs struct {
	t   testing.TB
	Dir string
}

// MountTmpfs mounts a tmpfs of size (mount's syntax: "16m") on a fresh
// directory, for the server user to use as a tablespace. It needs root;
// without it, or when the mount is refused (a container without
// CAP_SYS_ADMIN), the test is skipped with the reason.
//
// Call it before starting the clusters that use it: cleanups run last in
// first out, so the clusters are destroyed before the file system is
// unmounted.
func MountTmpfs(t testing.TB, size string) *Tmpfs {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting a small tmpfs for a full disk needs root")
	}
	owner, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("skipped: no postgres OS user to own the tmpfs: %v", err)
	}
	dir, err := os.MkdirTemp("", "tandem-tmpfs-")
	if err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("size=%s,mode=0700,uid=%s,gid=%s", size, owner.Uid, owner.Gid)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		os.Remove(dir)
		t.Skipf("skipped: cannot mount a tmpfs (mount -t tmpfs -o %s tmpfs %s): %v %s", opts, dir, err, strings.TrimSpace(string(out)))
	}
	fs := &Tmpfs{t: t, Dir: dir}
	t.Cleanup(fs.unmount)
	return fs
}

// Resize changes the file system's size, e.g. to free space.
func (fs *Tmpfs) Resize(size string) {
	fs.t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size="+size, fs.Dir).CombinedOutput(); err != nil {
		fs.t.Fatalf("resize tmpfs %s to %s: %v %s", fs.Dir, size, err, strings.TrimSpace(string(out)))
	}
}

func (fs *Tmpfs) unmount() {
	var last []byte
	for i := 0; i < 20; i++ {
		out, err := exec.Command("umount", fs.Dir).CombinedOutput()
		if err == nil {
			os.Remove(fs.Dir)
			return
		}
		last = out
		time.Sleep(250 * time.Millisecond)
	}
	// Something still holds it: detach it, so it goes when released.
	out, err := exec.Command("umount", "-l", fs.Dir).CombinedOutput()
	fs.t.Errorf("tmpfs %s still busy after 5s (%s); lazy unmount: %v %s", fs.Dir, strings.TrimSpace(string(last)), err, strings.TrimSpace(string(out)))
	os.Remove(fs.Dir)
}
