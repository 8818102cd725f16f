package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/sink"
)

// tailCmd follows the changes tandem publishes to NATS JetStream, for
// people: one line a change, with where it sits in the old database's
// history. It reads through an ordered consumer that the server forgets
// when tail exits, and never acknowledges anything.
func tailCmd(cfgPath *string) *cobra.Command {
	var tables []string
	var fromStart, asJSON bool
	var count int
	c := &cobra.Command{
		Use:   "tail",
		Short: "Follow the changes published to NATS JetStream",
		RunE: withConfig(cfgPath, 0, 1, func(ctx context.Context, cmd *cobra.Command, cfg *config.Config) error {
			if !cfg.NATS.Enabled() {
				return errors.New("nats.url: this migration publishes nothing (no nats: section); see configs/example.yaml")
			}
			subjects, err := tailSubjects(cfg, tables)
			if err != nil {
				return err
			}
			return tailStream(ctx, cmd.OutOrStdout(), cfg, subjects, fromStart, asJSON, count)
		}),
	}
	c.Flags().StringSliceVar(&tables, "table", nil, "only this table (source or target name, schema.table or table); repeatable")
	c.Flags().BoolVar(&fromStart, "from-start", false, "print the stream from its first message instead of only new ones")
	c.Flags().BoolVar(&asJSON, "json", false, "print each message's JSON as published, one per line")
	c.Flags().IntVar(&count, "count", 0, "stop after this many messages (0: until Ctrl-C)")
	return c
}

// tailSubjects are the subjects of the tables asked for (all of the
// migration's without --table). A table is found by the name it is
// published under: the target's in the new shape, the source's in the
// old, whichever of the two the user gives.
func tailSubjects(cfg *config.Config, tables []string) ([]string, error) {
	n := cfg.NATS
	if len(tables) == 0 {
		return []string{n.Subject + ".>"}, nil
	}
	var out []string
	for _, want := range tables {
		q := qualifiedName(want)
		found := false
		for _, t := range cfg.Tables {
			src, tgt := qualifiedName(t.Source), qualifiedName(t.Target)
			if q != src && q != tgt {
				continue
			}
			name := src
			if n.NewShape() {
				name = tgt
			}
			s, tn, _ := config.SplitQualified(name)
			if subj := sink.Subject(n.Subject, s, tn); !slices.Contains(out, subj) {
				out = append(out, subj)
			}
			found = true
		}
		if !found {
			return nil, fmt.Errorf("--table %s: no tables[] entry of %s has that source or target", want, cfg.Name)
		}
	}
	return out, nil
}

func tailStream(ctx context.Context, w io.Writer, cfg *config.Config, subjects []string, fromStart, asJSON bool, count int) error {
	nc, err := sink.ConnectNATS(ctx, cfg.NATS, cfg.Name, "tail", slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	st, err := js.Stream(ctx, cfg.NATS.Stream)
	if err != nil {
		return fmt.Errorf("nats.stream: %s: %w (has tandem run published anything yet?)", cfg.NATS.Stream, err)
	}
	policy := jetstream.DeliverNewPolicy
	if fromStart {
		policy = jetstream.DeliverAllPolicy
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: subjects, DeliverPolicy: policy})
	if err != nil {
		return fmt.Errorf("nats: follow stream %s: %w", cfg.NATS.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("nats: follow stream %s: %w", cfg.NATS.Stream, err)
	}
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	defer it.Stop()
	for n := 0; count == 0 || n < count; n++ {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("nats: read stream %s: %w", cfg.NATS.Stream, err)
		}
		if asJSON {
			fmt.Fprintf(w, "%s\n", msg.Data())
			continue
		}
		fmt.Fprintln(w, tailLine(msg.Headers(), msg.Data()))
	}
	return nil
}

// tailLine renders one message for a terminal:
//
//	12:04:05.123 0/1A2B3C8 #2 end  update public.orders_v2 id=7  status=paid total=12.50
//
// "end" marks a transaction's last message; for an update only the key
// and the columns after the change are shown.
func tailLine(h map[string][]string, data []byte) string {
	var m sink.Message
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Sprintf("(not a tandem message: %v) %s", err, data)
	}
	end := "   "
	if v := h[sink.HeaderLast]; len(v) > 0 && v[0] == "true" {
		end = "end"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s #%d %s %-8s %s.%s", m.CommitTime.Local().Format("15:04:05.000"), m.LSN, m.Seq, end, m.Op, m.Schema, m.Table)
	if len(m.OldKey) > 0 {
		b.WriteString(" " + pairs(m.OldKey) + " ->")
	}
	if len(m.Key) > 0 {
		b.WriteString(" " + pairs(m.Key))
	}
	if len(m.After) > 0 {
		b.WriteString("  " + pairs(m.After))
	}
	if len(m.Unchanged) > 0 {
		b.WriteString("  (unchanged: " + strings.Join(m.Unchanged, ", ") + ")")
	}
	return b.String()
}

// pairs renders a row as name=value in column name order, strings
// without their quotes.
func pairs(row map[string]json.RawMessage) string {
	names := make([]string, 0, len(row))
	for k := range row {
		names = append(names, k)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, k := range names {
		v := row[k]
		var s string
		if len(v) > 0 && v[0] == '"' && json.Unmarshal(v, &s) == nil {
			v = []byte(s)
		}
		parts[i] = k + "=" + string(bytes.TrimSpace(v))
	}
	return strings.Join(parts, " ")
}

func init() {
	helpPages["tandem tail"] = helpPage{
		long: `Follow the changes this migration publishes to NATS JetStream (the nats:
section), one line a change: commit time, commit LSN and position in the
source transaction ("end" on its last message), operation, table, key
and the row after the change. Reads through a throwaway ordered consumer
and acknowledges nothing, so it takes nothing from other consumers.`,
		example: `  tandem tail --config orders_v2.yaml
  tandem tail --table public.orders_v2 --config orders_v2.yaml
  tandem tail --from-start --json --count 100 --config orders_v2.yaml | jq .`,
	}
	exitCodes["tandem tail"] = "\n  0  stopped by Ctrl-C or after --count\n  1  the config does not load, the migration publishes nothing, or NATS cannot be read"
}

// qualifiedName spells a table as schema.table (public when no schema is
// given), as cfg.Tables may leave the schema out.
func qualifiedName(name string) string {
	s, t, err := config.SplitQualified(name)
	if err != nil {
		return name
	}
	return s + "." + t
}
