package main

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/drsync/drsync/metrics"
)

// serveMetrics serves h at the metrics address of config file until ctx
// ends; an address that cannot be bound is a configuration error.
func serveMetrics(ctx context.Context, file, addr string, h http.Handler, log *slog.Logger) error {
	bound, err := metrics.Serve(ctx, addr, h)
	if err != nil {
		return &configError{file, "metrics", err}
	}
	log.Info("metrics", "addr", "http://"+bound.String()+"/metrics")
	return nil
}
