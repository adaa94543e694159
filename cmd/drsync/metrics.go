package main

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/drsync/drsync/metrics"
	"github.com/drsync/drsync/statuspage"
)

// serveMetrics serves h at the metrics address of config file until ctx
// ends, and page at / and /status, sampling its lags meanwhile; an address
// that cannot be bound is a configuration error.
func serveMetrics(ctx context.Context, file, addr string, h http.Handler, page *statuspage.Handler, log *slog.Logger) error {
	bound, err := metrics.ServeWithPage(ctx, addr, h, page)
	if err != nil {
		return &configError{file, "metrics", err}
	}
	go page.Run(ctx, pageSampleEvery)
	log.Info("metrics", "addr", "http://"+bound.String()+"/metrics", "status_page", "http://"+bound.String()+"/")
	return nil
}
