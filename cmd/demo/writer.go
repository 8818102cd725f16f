package main

import (
	"context"
	"fmt"
	"math/rand"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// writer plays the application on the old database while tandem copies the
// history: it keeps placing orders (ids after the history's), moving orders
// through their life cycle, changing preferences and tenants, deleting
// orders and changing customers' emails, at a modest rate until its context
// ends. Half of its updates and deletes hit historic rows (ids 1..N), most
// of them before the backfill has copied them, some while it does.
type writer struct {
	conn *pgx.Conn
	rng  *rand.Rand

	nextCustomer, nextOrder int64

	// Counters are read by the status line while the writer runs.
	txs, inserts, updates, deletes atomic.Int64
}

// txPerSecond is the writer's rate: enough to change a few hundred
// historic rows during the copy, little enough for any laptop.
const txPerSecond = 50

// newWriter continues after the history (historySQL), so its ids never
// collide with rows the backfill copies.
func newWriter(conn *pgx.Conn) *writer {
	return &writer{conn: conn, rng: rand.New(rand.NewSource(time.Now().UnixNano())),
		nextCustomer: historyCustomers + 1, nextOrder: historyOrders + 1}
}

// run writes until ctx ends. It stops between transactions, so every
// transaction it started is committed and must reach the new side.
func (w *writer) run(ctx context.Context) error {
	// Statements run to completion even when ctx ends meanwhile.
	db := context.WithoutCancel(ctx)
	tick := time.NewTicker(time.Second / txPerSecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := w.tx(db, w.randomChange(db)); err != nil {
			return err
		}
	}
}

func (w *writer) tx(ctx context.Context, f func(pgx.Tx) error) error {
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin on the old database: %w", err)
	}
	defer tx.Rollback(ctx)
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit on the old database: %w", err)
	}
	w.txs.Add(1)
	return nil
}

// randomChange picks what the application does next. Statements address
// random existing ids; one that finds no row is harmless.
func (w *writer) randomChange(ctx context.Context) func(pgx.Tx) error {
	r := w.rng
	switch k := r.Intn(100); {
	case k < 3:
		return func(tx pgx.Tx) error { return w.insertCustomer(ctx, tx) }
	case k < 5:
		return func(tx pgx.Tx) error {
			return w.exec(ctx, tx, &w.updates, `UPDATE customers SET email = $2 WHERE id = $1`,
				w.someCustomer(), fmt.Sprintf("moved%d@example.org", r.Intn(1_000_000)))
		}
	case k < 40:
		return func(tx pgx.Tx) error { return w.insertOrder(ctx, tx) }
	case k < 65:
		// Orders move forward through their life cycle.
		return func(tx pgx.Tx) error {
			return w.exec(ctx, tx, &w.updates, `UPDATE orders SET status_code = LEAST(status_code + 1, 4) WHERE id = $1`, w.someOrder())
		}
	case k < 75:
		return func(tx pgx.Tx) error {
			return w.exec(ctx, tx, &w.updates, `UPDATE orders SET preferences = $2::jsonb WHERE id = $1`, w.someOrder(), w.preferences())
		}
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
		return func(tx pgx.Tx) error {
			return w.exec(ctx, tx, &w.updates, `UPDATE orders SET tenant_id = $2 WHERE id = $1`, id, r.Intn(4))
		}
	case k < 90:
		// Two changes in one transaction: both arrive, or neither.
		return func(tx pgx.Tx) error {
			if err := w.insertOrder(ctx, tx); err != nil {
				return err
			}
			return w.exec(ctx, tx, &w.updates, `UPDATE orders SET total = total + 1.50 WHERE id = $1`, w.someOrder())
		}
	default:
		return func(tx pgx.Tx) error {
			return w.exec(ctx, tx, &w.deletes, `DELETE FROM orders WHERE id = $1`, w.someOrder())
		}
	}
}

func (w *writer) exec(ctx context.Context, tx pgx.Tx, counter *atomic.Int64, sql string, args ...any) error {
	tag, err := tx.Exec(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("write to the old database: %w", err)
	}
	counter.Add(tag.RowsAffected())
	return nil
}

func (w *writer) insertCustomer(ctx context.Context, tx pgx.Tx) error {
	id := w.nextCustomer
	w.nextCustomer++
	var email any
	if w.rng.Intn(5) > 0 {
		email = fmt.Sprintf("customer%d@example.com", id)
	}
	return w.exec(ctx, tx, &w.inserts, `INSERT INTO customers (id, tenant_id, name, email) VALUES ($1, $2, $3, $4)`,
		id, 1+w.rng.Intn(3), fmt.Sprintf("Customer %d", id), email)
}

func (w *writer) insertOrder(ctx context.Context, tx pgx.Tx) error {
	id := w.nextOrder
	w.nextOrder++
	r := w.rng
	// One order in eight belongs to the internal tenant 0.
	tenant := 1 + r.Intn(3)
	if r.Intn(8) == 0 {
		tenant = 0
	}
	status := 1 + r.Intn(4)
	if r.Intn(20) == 0 {
		status = 9 // a code nobody remembers: becomes 'unknown'
	}
	return w.exec(ctx, tx, &w.inserts, `INSERT INTO orders (id, tenant_id, customer_id, status_code, total, preferences, legacy_flag)
		VALUES ($1, $2, $3, $4, $5::numeric, $6::jsonb, $7)`,
		id, tenant, w.someCustomer(), status, fmt.Sprintf("%d.%02d", 5+r.Intn(500), r.Intn(100)), w.preferences(), r.Intn(10) == 0)
}

func (w *writer) preferences() any {
	switch w.rng.Intn(4) {
	case 0:
		return nil
	case 1:
		return `{"gift_wrap": true}`
	case 2:
		return `{"delivery": {"window": "evening", "leave_at_door": false}}`
	default:
		return `{"newsletter": false, "channel": "email"}`
	}
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
