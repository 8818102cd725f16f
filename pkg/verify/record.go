package verify

import (
	"context"
	"errors"

	"github.com/tandem-migrate/tandem/pkg/catalog"
	"github.com/tandem-migrate/tandem/pkg/change"
	"github.com/tandem-migrate/tandem/pkg/checkpoint"
	"github.com/tandem-migrate/tandem/pkg/config"
)

// Record keeps each fully checked table's outcome on the target, where
// the cutover gates read it. since is the stream checkpoint when the
// verification started: changes after it may postdate what it compared.
// A target tandem never set up has nowhere to keep it, and that is fine.
func Record(ctx context.Context, tgt catalog.Querier, rep *Report, since change.LSN) error {
	var errs []error
	for _, t := range rep.Tables {
		if t.Error != "" || t.Truncated {
			continue
		}
		err := checkpoint.SaveVerifyPass(ctx, tgt, rep.Name, config.Qualified(t.Target), checkpoint.Pass{
			Compared: t.Compared, Differing: t.Diffs(), LSN: since})
		if checkpoint.Missing(err) {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
