package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"

	"github.com/tandem-migrate/tandem/pkg/config"
)

// envKeys are the settings an environment variable may override, so that a
// DSN with a password need not sit in the YAML file.
var envKeys = []string{
	"name", "source.dsn", "source.slot", "source.publication", "target.dsn",
	"checkpoint.store", "checkpoint.path", "metrics.listen", "log.level", "log.format",
	"control.socket", "control.listen", "control.token_file",
	"backfill.enabled", "nats.url", "nats.user", "nats.password", "nats.token",
}

// loadConfig reads the YAML file, applies TANDEM_* environment overrides,
// fills defaults and validates. viper stays here; pkg/ sees a plain struct.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return nil, errors.New("--config is required: tandem run --config configs/demo.yaml")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	v.SetEnvPrefix("TANDEM")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	for _, k := range envKeys {
		if err := v.BindEnv(k); err != nil {
			return nil, err
		}
	}
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("config %s is not valid YAML: %s", path, oneLine(err.Error()))
	}
	var cfg config.Config
	err := v.UnmarshalExact(&cfg, func(dc *mapstructure.DecoderConfig) {
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.DecodeHookFuncType(durationHook),
			mapstructure.StringToSliceHookFunc(","),
		)
	})
	if lines := durationErrors(err); len(lines) > 0 {
		return nil, fmt.Errorf("config %s:\n  %s", path, strings.Join(lines, "\n  "))
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %s (check the field names against configs/example.yaml)", path, oneLine(err.Error()))
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s:\n  %s", path, strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	return &cfg, nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func newLogger(cfg *config.Config) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if cfg.Log.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	return slog.New(h).With("migration", cfg.Name)
}
