// Command cricleanup talks CRI to the local e2e cluster's containerd.
//
//	cricleanup -endpoint unix:///path/containerd.sock list   # one line per pod sandbox
//	cricleanup -endpoint unix:///path/containerd.sock rm-all # stop+remove every sandbox
//
// rm-all is what k8s_down runs after stopping the kubelet: StopPodSandbox makes
// containerd run CNI DEL, which removes the pod's veth, netns and portmap rules.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	endpoint := flag.String("endpoint", "", "CRI endpoint, unix:///path")
	timeout := flag.Duration("timeout", 60*time.Second, "overall timeout")
	flag.Parse()
	if *endpoint == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: cricleanup -endpoint unix:///sock list|rm-all")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := grpc.NewClient(*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	resp, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "list sandboxes:", err)
		os.Exit(1)
	}
	failed := false
	for _, s := range resp.Items {
		name := s.GetMetadata().GetNamespace() + "/" + s.GetMetadata().GetName()
		switch flag.Arg(0) {
		case "list":
			fmt.Printf("%s %s %s\n", s.Id[:12], s.State, name)
		case "rm-all":
			if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
				fmt.Fprintln(os.Stderr, "stop", name, err)
				failed = true
			}
			if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
				fmt.Fprintln(os.Stderr, "remove", name, err)
				failed = true
			}
		default:
			fmt.Fprintln(os.Stderr, "unknown command", flag.Arg(0))
			os.Exit(2)
		}
	}
	if failed {
		os.Exit(1)
	}
}
