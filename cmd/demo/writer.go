package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tandem-migrate/tandem/internal/pgcluster"
)

// side is the database the applications write to.
type side int32

const (
	oldSide side = iota
	newSide
)

func (s side) String() string { return [...]string{"old", "new"}[s] }

// writer plays the application: it keeps placing orders (ids after the
// history's), moving orders through their life cycle, changing preferences
// and tenants, deleting orders and changing customers' emails, at a modest
// rate until its context ends. Half of its updates and deletes hit historic
// rows (ids 1..N), most of them before the backfill has copied them, some
// while it does.
//
// It writes to whichever database it is pointed at (point), in that
// database's schema, as an application does once its configuration is
// switched. During a switch the database being left refuses its writes
// (the ceremony's fence: sessions ended, then read-only); the writer
// counts each refusal, reconnects, and retries the same change until it
// goes through, on the database it is pointed at by then.
type writer struct {
	db  [2]*pgcluster.Cluster
	cur [2]*pgx.Conn
	rng *rand.Rand

	// ids continue after the history (historySQL) on both databases: the
	// demo's tables draw no keys from sequences, so the application's own
	// counter is what the new database continues from after cutover.
	nextCustomer, nextOrder int64

	at atomic.Int32 // the side written to

	// Counters are read by the status line while the writer runs.
	txs                       [2]atomic.Int64 // committed, per side
	refused                   [2]atomic.Int64 // attempts refused, per side
	inserts, updates, deletes atomic.Int64

	mu sync.Mutex
	// blocked is when the first refusal since the last commit came, and
	// attempts how many were refused since; outages are the spans from
	// there to the next commit.
	blocked  time.Time
	attempts int64
	outages  []outage
}

// outage is a span in which the writer could not commit: from the first
// refused attempt to the next commit, on the side it committed on then.
type outage struct {
	took     time.Duration
	attempts int64
	resumed  side
}

// txPerSecond is the writer's rate: enough to change a few hundred
// historic rows during the copy, little enough for any laptop.
const txPerSecond = 50

// retryPause is how long the writer waits after a refused attempt before
// it reconnects: an application's retry loop, not a busy one.
const retryPause = 50 * time.Millisecond

// newWriter starts on the old database and continues after the history,
// so its ids never collide with rows the backfill copies.
func newWriter(old, new *pgcluster.Cluster) *writer {
	return &writer{db: [2]*pgcluster.Cluster{old, new}, rng: rand.New(rand.NewSource(time.Now().UnixNano())),
		nextCustomer: historyCustomers + 1, nextOrder: historyOrders + 1}
}

// point switches the application to s; the next attempt goes there.
func (w *writer) point(s side) { w.at.Store(int32(s)) }

func (w *writer) side() side { return side(w.at.Load()) }

func (w *writer) committed() int64 { return w.txs[oldSide].Load() + w.txs[newSide].Load() }

func (w *writer) refusals() int64 { return w.refused[oldSide].Load() + w.refused[newSide].Load() }

// run writes until ctx ends. It stops between attempts, so every
// transaction it committed must reach the other side, and none is left
// half done.
func (w *writer) run(ctx context.Context) error {
	defer w.close()
	// Statements run to completion even when ctx ends meanwhile.
	db := context.WithoutCancel(ctx)
	tick := time.NewTicker(time.Second / txPerSecond)
	defer tick.Stop()
	for {
		op := w.randomChange()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			done, err := w.attempt(db, &op)
			if err != nil {
				return err
			}
			if done {
				break
			}
		}
	}
}

// attempt runs op once on the side the writer points at. It reports
// whether op is done; a refusal by a switch is not an error, only a retry.
func (w *writer) attempt(ctx context.Context, op *change) (bool, error) {
	s := w.side()
	conn, err := w.conn(ctx, s)
	if err == nil {
		err = w.tx(ctx, conn, s, op)
	}
	if err != nil && op.maybeCommitted && isDuplicateKey(err) {
		// The earlier attempt's COMMIT went through, and the session
		// ended before it could say so: the row is there already.
		err = nil
	}
	switch {
	case err == nil:
		w.txs[s].Add(1)
		w.mu.Lock()
		if !w.blocked.IsZero() {
			w.outages = append(w.outages, outage{took: time.Since(w.blocked), attempts: w.attempts, resumed: s})
			w.blocked, w.attempts = time.Time{}, 0
		}
		w.mu.Unlock()
		return true, nil
	case concurrencyAbort(err):
		return false, nil // retried as is: nothing to do with a switch
	case refusedBySwitch(err) || (conn != nil && conn.IsClosed()):
		w.refused[s].Add(1)
		w.mu.Lock()
		if w.blocked.IsZero() {
			w.blocked = time.Now()
		}
		w.attempts++
		w.mu.Unlock()
		// A session that started while the database was fenced keeps its
		// read-only default after the fence is lifted: only a new
		// session can write again.
		w.drop(s)
		time.Sleep(retryPause)
		return false, nil
	}
	return false, fmt.Errorf("write on the %s database: %w", s, err)
}

func (w *writer) conn(ctx context.Context, s side) (*pgx.Conn, error) {
	if c := w.cur[s]; c != nil && !c.IsClosed() {
		return c, nil
	}
	c, err := connectAs(ctx, w.db[s], "demo-writer")
	if err != nil {
		return nil, err
	}
	w.cur[s] = c
	return c, nil
}

func (w *writer) drop(s side) {
	if c := w.cur[s]; c != nil {
		c.Close(context.Background())
		w.cur[s] = nil
	}
}

func (w *writer) close() {
	w.drop(oldSide)
	w.drop(newSide)
}

func (w *writer) tx(ctx context.Context, conn *pgx.Conn, s side, op *change) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	var n [3]int64 // inserted, updated, deleted
	for _, st := range op.statements(s) {
		tag, err := tx.Exec(ctx, st.sql, st.args...)
		if err != nil {
			return err
		}
		n[st.kind] += tag.RowsAffected()
	}
	if err := tx.Commit(ctx); err != nil {
		// A session ended during COMMIT may have committed: the retry
		// must not fail on its own insert.
		op.maybeCommitted = op.maybeCommitted || !pgconn.SafeToRetry(err)
		return err
	}
	// Counted once committed, so a refused attempt counts nothing.
	w.inserts.Add(n[0])
	w.updates.Add(n[1])
	w.deletes.Add(n[2])
	return nil
}

// outagesSoFar returns the spans in which the writer could not commit.
func (w *writer) outagesSoFar() []outage {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]outage(nil), w.outages...)
}

// refusedBySwitch is what an application sees while a database is fenced
// (25006, read-only transaction) or its sessions are ended (57P01 and the
// rest of class 57P), or when its connection breaks meanwhile.
func refusedBySwitch(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "25006" || strings.HasPrefix(pgErr.Code, "57P")
	}
	return pgconn.SafeToRetry(err) || isConnError(err)
}

func isDuplicateKey(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// isConnError tells a broken connection (the server ended the session)
// from an error in the writer's own SQL, which never comes without a
// PgError.
func isConnError(err error) bool {
	var connect *pgconn.ConnectError
	return errors.As(err, &connect) || strings.Contains(err.Error(), "conn closed") ||
		strings.Contains(err.Error(), "unexpected EOF") || strings.Contains(err.Error(), "connection reset")
}

// concurrencyAbort is a deadlock or serialization failure: PostgreSQL
// asks for the transaction to be run again.
func concurrencyAbort(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

// change is one thing the application does, decided once and written in
// the schema of whichever database takes it, however often it is retried.
type change struct {
	kind changeKind
	// id is the row changed (a new one for inserts); other is a second
	// order touched in the same transaction.
	id, other, customer int64
	tenant, status      int
	total               string
	prefs               int // index into preferenceValues
	flag                bool
	email               string
	// maybeCommitted is set when an attempt's COMMIT got no answer.
	maybeCommitted bool
}

type changeKind int

const (
	insertCustomer changeKind = iota
	changeEmail
	insertOrder
	advanceStatus
	changePreferences
	moveTenant
	insertAndBump
	deleteOrder
)

// randomChange picks what the application does next. Statements address
// random existing ids; one that finds no row is harmless.
func (w *writer) randomChange() change {
	r := w.rng
	switch k := r.Intn(100); {
	case k < 3:
		id := w.nextCustomer
		w.nextCustomer++
		c := change{kind: insertCustomer, id: id, tenant: 1 + r.Intn(3)}
		if r.Intn(5) > 0 {
			c.email = fmt.Sprintf("customer%d@example.com", id)
		}
		return c
	case k < 5:
		return change{kind: changeEmail, id: w.someCustomer(), email: fmt.Sprintf("moved%d@example.org", r.Intn(1_000_000))}
	case k < 40:
		return w.newOrder(insertOrder)
	case k < 65:
		return change{kind: advanceStatus, id: w.someOrder()}
	case k < 75:
		return change{kind: changePreferences, id: w.someOrder(), prefs: r.Intn(len(preferenceValues))}
	case k < 82:
		// Moves an order into or out of the internal tenant, so it enters
		// or leaves the filter on the new side. One in four is a historic
		// order with long notes (every 1000th): its preferences are stored
		// out of line, which the UPDATE does not send, so entering the
		// filter needs the old row (REPLICA IDENTITY FULL).
		id := w.someOrder()
		if r.Intn(4) == 0 {
			id = 1000 * (1 + r.Int63n(historyOrders/1000))
		}
		return change{kind: moveTenant, id: id, tenant: r.Intn(4)}
	case k < 90:
		// Two changes in one transaction: both arrive, or neither.
		c := w.newOrder(insertAndBump)
		c.other = w.someOrder()
		return c
	default:
		return change{kind: deleteOrder, id: w.someOrder()}
	}
}

func (w *writer) newOrder(kind changeKind) change {
	r := w.rng
	id := w.nextOrder
	w.nextOrder++
	// One order in eight belongs to the internal tenant 0.
	tenant := 1 + r.Intn(3)
	if r.Intn(8) == 0 {
		tenant = 0
	}
	status := 1 + r.Intn(4)
	if r.Intn(20) == 0 {
		status = 9 // a code nobody remembers: becomes 'unknown'
	}
	return change{kind: kind, id: id, customer: w.someCustomer(), tenant: tenant, status: status,
		total: fmt.Sprintf("%d.%02d", 5+r.Intn(500), r.Intn(100)), prefs: r.Intn(len(preferenceValues)), flag: r.Intn(10) == 0}
}

// preferenceValues are what customers choose; nil is "no preferences",
// NULL in the old schema and '{}' in the new one.
var preferenceValues = []any{nil, `{"gift_wrap": true}`, `{"delivery": {"window": "evening", "leave_at_door": false}}`, `{"newsletter": false, "channel": "email"}`}

// statusLabels are the new schema's names for the old status codes.
var statusLabels = map[int]string{1: "pending", 2: "paid", 3: "shipped", 4: "cancelled", 9: "unknown"}

type statement struct {
	kind int // 0 insert, 1 update, 2 delete: the counter it adds to
	sql  string
	args []any
}

// statements renders c for the schema of side s.
func (c change) statements(s side) []statement {
	if s == newSide {
		return c.onNew()
	}
	return c.onOld()
}

func (c change) onOld() []statement {
	switch c.kind {
	case insertCustomer:
		return []statement{{0, `INSERT INTO customers (id, tenant_id, name, email) VALUES ($1, $2, $3, $4)`,
			[]any{c.id, c.tenant, fmt.Sprintf("Customer %d", c.id), nullable(c.email)}}}
	case changeEmail:
		return []statement{{1, `UPDATE customers SET email = $2 WHERE id = $1`, []any{c.id, c.email}}}
	case insertOrder, insertAndBump:
		out := []statement{{0, `INSERT INTO orders (id, tenant_id, customer_id, status_code, total, preferences, legacy_flag)
			VALUES ($1, $2, $3, $4, $5::numeric, $6::jsonb, $7)`,
			[]any{c.id, c.tenant, c.customer, c.status, c.total, preferenceValues[c.prefs], c.flag}}}
		if c.kind == insertAndBump {
			out = append(out, statement{1, `UPDATE orders SET total = total + 1.50 WHERE id = $1`, []any{c.other}})
		}
		return out
	case advanceStatus:
		// Orders move forward through their life cycle.
		return []statement{{1, `UPDATE orders SET status_code = LEAST(status_code + 1, 4) WHERE id = $1`, []any{c.id}}}
	case changePreferences:
		return []statement{{1, `UPDATE orders SET preferences = $2::jsonb WHERE id = $1`, []any{c.id, preferenceValues[c.prefs]}}}
	case moveTenant:
		return []statement{{1, `UPDATE orders SET tenant_id = $2 WHERE id = $1`, []any{c.id, c.tenant}}}
	default:
		return []statement{{2, `DELETE FROM orders WHERE id = $1`, []any{c.id}}}
	}
}

// onNew is the same change as the application writes it after cutover:
// orders_v2, customer_ref, an order_status label, '{}' for no
// preferences, created_at given (the new tables have no default for it),
// and no internal tenant 0, which the new schema does not allow.
func (c change) onNew() []statement {
	prefs := preferenceValues[c.prefs]
	if prefs == nil {
		prefs = `{}`
	}
	tenant := c.tenant
	if tenant == 0 {
		tenant = 1 + int(c.id%3)
	}
	switch c.kind {
	case insertCustomer:
		return []statement{{0, `INSERT INTO customers (id, tenant_id, name, email, created_at) VALUES ($1, $2, $3, $4, now())`,
			[]any{c.id, c.tenant, fmt.Sprintf("Customer %d", c.id), nullable(c.email)}}}
	case changeEmail:
		return []statement{{1, `UPDATE customers SET email = $2 WHERE id = $1`, []any{c.id, c.email}}}
	case insertOrder, insertAndBump:
		status := statusLabels[c.status]
		if c.status == 9 {
			status = "pending" // the new application has no forgotten codes
		}
		out := []statement{{0, `INSERT INTO orders_v2 (id, tenant_id, customer_ref, status, total, preferences, created_at)
			VALUES ($1, $2, $3, $4::order_status, $5::numeric, $6::jsonb, now())`,
			[]any{c.id, tenant, c.customer, status, c.total, prefs}}}
		if c.kind == insertAndBump {
			out = append(out, statement{1, `UPDATE orders_v2 SET total = total + 1.50 WHERE id = $1`, []any{c.other}})
		}
		return out
	case advanceStatus:
		// The old LEAST(status_code + 1, 4), in labels.
		return []statement{{1, `UPDATE orders_v2 SET status = (CASE status WHEN 'pending' THEN 'paid' WHEN 'paid' THEN 'shipped'
			ELSE 'cancelled' END)::order_status WHERE id = $1`, []any{c.id}}}
	case changePreferences:
		return []statement{{1, `UPDATE orders_v2 SET preferences = $2::jsonb WHERE id = $1`, []any{c.id, prefs}}}
	case moveTenant:
		return []statement{{1, `UPDATE orders_v2 SET tenant_id = $2 WHERE id = $1`, []any{c.id, tenant}}}
	default:
		return []statement{{2, `DELETE FROM orders_v2 WHERE id = $1`, []any{c.id}}}
	}
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// someOrder is a historic order half the time, and otherwise one the writer
// placed (once it has placed some).
func (w *writer) someOrder() int64 {
	if placed := w.nextOrder - 1 - historyOrders; placed > 0 && w.rng.Intn(2) == 0 {
		return historyOrders + 1 + w.rng.Int63n(placed)
	}
	return 1 + w.rng.Int63n(historyOrders)
}

func (w *writer) someCustomer() int64 {
	return 1 + w.rng.Int63n(w.nextCustomer-1)
}
