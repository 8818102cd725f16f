package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/tandem-migrate/tandem/pkg/config"
	"github.com/tandem-migrate/tandem/pkg/control"
)

// backfillCmd groups the commands that change a running copy through its
// control surface (pkg/control). They change the running daemon only: a
// restart or a SIGHUP goes back to the limits in the config file.
func backfillCmd(cfgPath *string) *cobra.Command {
	var target control.Target
	var asJSON bool
	c := &cobra.Command{
		Use:   "backfill",
		Short: "Pause, resume or change the limits of a running tandem's copy",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.PersistentFlags().StringVar(&target.Socket, "socket", "", "control socket of the daemon (default: found from the config's name and control.socket)")
	c.PersistentFlags().StringVar(&target.Addr, "addr", "", "reach the daemon on control.listen (host:port) instead, with the token in control.token_file")
	c.PersistentFlags().BoolVar(&asJSON, "json", false, "print the limits as JSON")

	send := func(form url.Values) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadControlConfig(*cfgPath)
			if err != nil {
				return err
			}
			cl, err := control.NewClient(cfg, target)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			var st control.State
			if form == nil {
				st, err = cl.Get(ctx)
			} else {
				st, err = cl.Change(ctx, form)
			}
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			writeState(cmd.OutOrStdout(), st)
			return nil
		}
	}
	show := &cobra.Command{Use: "show", Short: "Print the running copy's limits and whether it is held back", Args: cobra.NoArgs, RunE: send(nil)}
	pause := &cobra.Command{Use: "pause", Short: "Pause the copy (the stream goes on)", Args: cobra.NoArgs, RunE: send(url.Values{"pause": {""}})}
	resume := &cobra.Command{Use: "resume", Short: "Resume a paused copy", Args: cobra.NoArgs, RunE: send(url.Values{"resume": {""}})}

	var chunkRows int
	var chunkBytes int64
	var rowsPS, bytesPS float64
	set := &cobra.Command{
		Use:   "set",
		Short: "Change the running copy's chunk size and rate caps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			form := url.Values{}
			for flag, value := range map[string]string{
				"chunk-rows":       strconv.Itoa(chunkRows),
				"chunk-bytes":      strconv.FormatInt(chunkBytes, 10),
				"rows-per-second":  strconv.FormatFloat(rowsPS, 'f', -1, 64),
				"bytes-per-second": strconv.FormatFloat(bytesPS, 'f', -1, 64),
			} {
				if cmd.Flags().Changed(flag) {
					form.Set(strings.ReplaceAll(flag, "-", "_"), value)
				}
			}
			if len(form) == 0 {
				return errors.New("nothing to set: give at least one of --chunk-rows, --chunk-bytes, --rows-per-second, --bytes-per-second")
			}
			return send(form)(cmd, args)
		},
	}
	set.Flags().IntVar(&chunkRows, "chunk-rows", 0, "rows per chunk (at least 1)")
	set.Flags().Int64Var(&chunkBytes, "chunk-bytes", 0, "bytes at which a chunk ends early (at least 1)")
	set.Flags().Float64Var(&rowsPS, "rows-per-second", 0, "cap on rows copied per second; 0 removes the cap")
	set.Flags().Float64Var(&bytesPS, "bytes-per-second", 0, "cap on bytes read per second; 0 removes the cap")
	c.AddCommand(show, pause, resume, set)
	return c
}

func writeState(w io.Writer, st control.State) {
	state := "running"
	if st.Throttled != "" {
		state = "held back: " + st.Throttled
	}
	capText := func(v float64, unit string) string {
		if v <= 0 {
			return "no cap"
		}
		return strconv.FormatFloat(v, 'f', -1, 64) + " " + unit
	}
	fmt.Fprintf(w, "backfill %s\n  chunk_rows        %d\n  chunk_bytes       %d\n  rows_per_second   %s\n  bytes_per_second  %s\n",
		state, st.ChunkRows, st.ChunkBytes, capText(st.RowsPerSecond, "rows/s"), capText(st.BytesPerSecond, "bytes/s"))
}

// loadControlConfig reads only what finding the daemon needs: the
// migration's name and the control section. The operator's shell need not
// hold the DSNs (systemd reads them from an EnvironmentFile), so the full
// validation of loadConfig would refuse a config the daemon runs with.
func loadControlConfig(path string) (*config.Config, error) {
	if path == "" {
		return nil, errors.New("--config is required: the migration's config file names the daemon to reach")
	}
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	v.SetEnvPrefix("TANDEM")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	for _, k := range []string{"name", "source.slot", "control.socket", "control.listen", "control.token_file"} {
		if err := v.BindEnv(k); err != nil {
			return nil, err
		}
	}
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("config %s: %s", path, oneLine(err.Error()))
	}
	cfg := &config.Config{
		Name:    v.GetString("name"),
		Source:  config.SourceConfig{Slot: v.GetString("source.slot")},
		Control: config.ControlConfig{Socket: v.GetString("control.socket"), Listen: v.GetString("control.listen"), TokenFile: v.GetString("control.token_file")},
	}
	cfg.ApplyDefaults()
	if cfg.Name == "" {
		return nil, fmt.Errorf("config %s: name (or source.slot) is required to find the daemon", path)
	}
	return cfg, nil
}

// controlMoved answers the metrics listener's old /backfill path, so a
// script written against it learns where the controls went instead of
// getting a bare 404.
func controlMoved() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "the backfill controls are no longer served on the metrics listener: use `tandem backfill show|pause|resume|set --config <file>` "+
			"(unix socket control.socket, or control.listen with control.token_file)", http.StatusGone)
	})
}
