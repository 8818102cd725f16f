package main

import "fmt"

// oldSchema is the shape the applications use today.
const oldSchema = `
CREATE TABLE customers (
	id         bigint PRIMARY KEY,
	tenant_id  integer NOT NULL,
	name       text NOT NULL,
	email      text,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
	id          bigint PRIMARY KEY,
	tenant_id   integer NOT NULL,              -- tenant 0 holds internal test orders
	customer_id bigint NOT NULL REFERENCES customers (id),
	status_code integer NOT NULL,              -- 1 pending, 2 paid, 3 shipped, 4 cancelled
	total       numeric(12,2) NOT NULL,
	preferences jsonb,                         -- NULL means "no preferences"
	legacy_flag boolean NOT NULL DEFAULT false, -- unused for years; gone in v2
	created_at  timestamptz NOT NULL DEFAULT now()
);
-- orders is filtered (tenant_id <> 0) and maps preferences, a jsonb that can
-- be stored out of line (TOAST). Without the whole old row on UPDATE, tandem
-- could not insert a row that moves into the filter with a preferences value
-- the UPDATE did not touch: PostgreSQL does not send unchanged TOASTed
-- values. tandem validate refuses the mapping and names this fix.
ALTER TABLE orders REPLICA IDENTITY FULL;
`

// History on the old database before tandem starts: what a real migration
// begins with, and what the backfill copies while the stream runs. Ids are
// 1..historyCustomers and 1..historyOrders; the writer continues after them.
const (
	historyCustomers = 5000
	historyOrders    = 200000
)

// historySQL generates the history server-side (generate_series), in one
// statement per table, so 200,000 rows take a second or two. setseed makes
// every run load the same rows. Customers and orders spread over three
// years; an order goes to a customer who existed by then; most old orders
// are shipped, the latest still pending or paid; about 1 in 20 belongs to
// the internal tenant 0 (filtered out), a quarter have no preferences
// (NULL), and 1 in 1,000 carries long delivery notes, large enough to be
// stored out of line (TOAST). ANALYZE gives the backfill its row estimates
// (pg_class.reltuples, shown as progress).
var historySQL = fmt.Sprintf(`
SELECT setseed(0.42);

INSERT INTO customers (id, tenant_id, name, email, created_at)
SELECT i, tenant, first || ' ' || last,
	CASE WHEN random() < 0.1 THEN NULL ELSE lower(first) || '.' || lower(last) || i || '@example.com' END,
	timestamptz '2021-01-01 00:00:00+00' + (i - 1) * (interval '3 years' / %[1]d) + random() * interval '1 hour'
FROM (SELECT i, 1 + floor(random() * 3)::int AS tenant,
		(ARRAY['Ada','Alan','Barbara','Edsger','Frances','Grace','Ivan','Jean','John','Katherine','Ken','Leslie','Margaret','Niklaus','Radia','Tony'])[1 + floor(random() * 16)::int] AS first,
		(ARRAY['Allen','Bartik','Dijkstra','Hamilton','Hoare','Hopper','Johnson','Kay','Knuth','Lamport','Liskov','Lovelace','Perlman','Ritchie','Thompson','Wirth'])[1 + floor(random() * 16)::int] AS last
	FROM generate_series(1, %[1]d) i) s;

INSERT INTO orders (id, tenant_id, customer_id, status_code, total, preferences, legacy_flag, created_at)
SELECT s.i,
	CASE WHEN random() < 0.05 THEN 0 ELSE c.tenant_id END,
	c.id,
	CASE WHEN random() < 0.01 THEN 9                                -- a code nobody remembers
		WHEN s.i > %[2]d - 2000 THEN 1 + floor(random() * 2)::int   -- recent: pending or paid
		WHEN random() < 0.08 THEN 4                                 -- cancelled
		ELSE 3 END,                                                 -- shipped
	round(exp(1.5 + random() * 4.5)::numeric, 2),
	CASE WHEN s.i %% 1000 = 0 THEN jsonb_build_object('delivery', jsonb_build_object('window', 'evening', 'notes',
			(SELECT string_agg(md5(s.i::text || ':' || g), ' ') FROM generate_series(1, 200) g)))  -- about 6.6kB
		ELSE CASE floor(random() * 4)::int
			WHEN 0 THEN NULL
			WHEN 1 THEN jsonb_build_object('gift_wrap', random() < 0.5)
			WHEN 2 THEN jsonb_build_object('delivery', jsonb_build_object('window',
				(ARRAY['morning','afternoon','evening'])[1 + floor(random() * 3)::int], 'leave_at_door', random() < 0.5))
			ELSE jsonb_build_object('newsletter', random() < 0.3, 'channel', (ARRAY['email','sms'])[1 + floor(random() * 2)::int])
		END
	END,
	random() < 0.1,
	timestamptz '2021-01-01 00:00:00+00' + (s.i - 1) * (interval '3 years' / %[2]d) + random() * interval '5 minutes'
FROM (SELECT i, 1 + floor(random() * greatest(1, i * %[1]d / %[2]d))::bigint AS customer FROM generate_series(1, %[2]d) i) s
JOIN customers c ON c.id = s.customer;

ANALYZE customers, orders;
`, historyCustomers, historyOrders)

// newSchema is the shape being migrated to: an enum instead of a magic
// number, a renamed column, preferences never NULL, legacy_flag gone, a
// column only the new schema has, and no internal tenant.
//
// orders_v2 has no foreign key to customers: tandem applies each table in
// source commit order, but a backfill copies tables independently, so
// cross-table constraints are added at cutover.
const newSchema = `
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'cancelled', 'unknown');
CREATE TABLE customers (
	id         bigint PRIMARY KEY,
	tenant_id  integer NOT NULL,
	name       text NOT NULL,
	email      text,
	created_at timestamptz NOT NULL
);
CREATE TABLE orders_v2 (
	id           bigint PRIMARY KEY,
	tenant_id    integer NOT NULL CHECK (tenant_id <> 0),
	customer_ref bigint NOT NULL,
	status       order_status NOT NULL,
	total        numeric(12,2) NOT NULL,
	preferences  jsonb NOT NULL,
	created_at   timestamptz NOT NULL,
	migrated_at  timestamptz NOT NULL DEFAULT now()
);
`

// The comparison at the end computes the expected new rows on the old
// database with SQL written here, independently of tandem's transform, and
// fingerprints both sides.
const (
	expectedOrders = `SELECT count(*), md5(COALESCE(string_agg(concat_ws('|', id, tenant_id, customer_id,
		CASE status_code WHEN 1 THEN 'pending' WHEN 2 THEN 'paid' WHEN 3 THEN 'shipped' WHEN 4 THEN 'cancelled' ELSE 'unknown' END,
		total, COALESCE(preferences, '{}'::jsonb), created_at), ',' ORDER BY id), ''))
		FROM orders WHERE tenant_id <> 0`
	actualOrders = `SELECT count(*), md5(COALESCE(string_agg(concat_ws('|', id, tenant_id, customer_ref, status, total, preferences, created_at), ',' ORDER BY id), ''))
		FROM orders_v2`
	customerRows = `SELECT count(*), md5(COALESCE(string_agg(concat_ws('|', id, tenant_id, name, email, created_at), ',' ORDER BY id), ''))
		FROM customers`
)
