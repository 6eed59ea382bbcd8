// A Redpanda Connect binary with only the components the benchmark uses: the Kafka
// inputs (kafka_franz, kafka), the Redis outputs and processors (redis_list, redis,
// redis_script) and the pure processors (mapping, log, ...). The component code is the
// pinned module's own, registered exactly as cmd/redpanda-connect-community does; the
// ~60 other plugin families (clouds, databases, AI) are left out so the build fits the
// machine. See bench/README.md.
package main

import (
	"context"

	"github.com/redpanda-data/benthos/v4/public/service"

	_ "github.com/redpanda-data/connect/v4/public/components/kafka"
	_ "github.com/redpanda-data/connect/v4/public/components/pure"
	_ "github.com/redpanda-data/connect/v4/public/components/redis"
)

// Version is set at build time by bench/build.sh.
var Version = "v4.45.0"

func main() {
	service.RunCLI(
		context.Background(),
		service.CLIOptSetVersion(Version, ""),
		service.CLIOptSetBinaryName("redpanda-connect"),
		service.CLIOptSetProductName("Redpanda Connect"),
	)
}
