package checkpoint

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-migrate/tandem/pkg/change"
)

func TestFileStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f := &FileStore{Path: filepath.Join(dir, "demo.ckpt")}
	if _, ok, err := f.Load(ctx); err != nil || ok {
		t.Fatalf("empty store: ok=%v err=%v", ok, err)
	}
	for _, lsn := range []change.LSN{0x16B3748, 0x100000000, 0x2FFFFFFFF} {
		if err := f.SaveCommitted(ctx, lsn); err != nil {
			t.Fatal(err)
		}
		got, ok, err := f.Load(ctx)
		if err != nil || !ok || got != lsn {
			t.Fatalf("Load = %s %v %v, want %s", got, ok, err, lsn)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	if err := os.WriteFile(f.Path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Load(ctx); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt file: err = %v", err)
	}
	ro := &FileStore{Path: filepath.Join(dir, "missing-dir", "x.ckpt")}
	if err := ro.SaveCommitted(ctx, 1); err == nil {
		t.Fatal("save into a missing directory succeeded")
	}
}
