package proxy

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestServerErrorLog(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := serverErrorLog(zap.New(core))
	l.Printf("http: TLS handshake error from 192.0.2.1:5555: EOF")
	l.Printf("http: panic serving 192.0.2.1:5555: boom")
	all := logs.All()
	if len(all) != 2 || all[0].Level != zapcore.DebugLevel || all[1].Level != zapcore.WarnLevel ||
		all[1].Message != "http: panic serving 192.0.2.1:5555: boom" {
		t.Fatalf("logged %+v", all)
	}
}
