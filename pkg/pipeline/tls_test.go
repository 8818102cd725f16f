package pipeline_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
	"github.com/tandem-migrate/tandem/internal/testkit"
)

// enableTLS gives a cluster a self-signed certificate and turns ssl on.
func enableTLS(t *testing.T, c *pgcluster.Cluster) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteDataFile("server.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteDataFile("server.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", "ALTER SYSTEM SET ssl = on"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "postgres", "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
}

// TestStreamOverTLS runs tandem with sslmode=require to both databases and
// checks on each server that tandem's sessions are encrypted.
func TestStreamOverTLS(t *testing.T) {
	ctx := context.Background()
	env := testkit.Setup(t)
	enableTLS(t, env.Source)
	enableTLS(t, env.Target)
	tlsDSN := func(dsn string) string { return strings.Replace(dsn, "sslmode=disable", "sslmode=require", 1) }
	env.SourceDSN, env.TargetDSN = tlsDSN(env.SourceDSN), tlsDSN(env.TargetDSN)
	src := testkit.Connect(t, env.SourceDSN)
	tgt := testkit.Connect(t, env.TargetDSN)

	cfg := env.Config("tls")
	startConfig(t, cfg)
	testkit.WaitSlot(t, src, "tls", time.Minute)
	w := testkit.NewWorkload(src, 41)
	for i := 0; i < 50; i++ {
		if err := w.Step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := testkit.Mark(ctx, src, 1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitMark(t, tgt, 1, time.Minute)
	testkit.Compare(t, src, tgt)

	var walsenderSSL bool
	if err := src.QueryRow(ctx, `SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
		WHERE a.backend_type = 'walsender' AND a.application_name LIKE 'tandem/%/replication'`).Scan(&walsenderSSL); err != nil {
		t.Fatalf("find tandem's walsender: %v", err)
	}
	var unencrypted int
	if err := tgt.QueryRow(ctx, `SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
		WHERE a.backend_type = 'client backend' AND NOT s.ssl`).Scan(&unencrypted); err != nil {
		t.Fatal(err)
	}
	if !walsenderSSL || unencrypted != 0 {
		t.Fatalf("replication over TLS: %v; unencrypted sessions on the target: %d", walsenderSSL, unencrypted)
	}
}
