// Command rpcfloor serves the stock grpc.health.v1 Check on a loopback port it prints, until killed:
// the floor of a gRPC call answered by a compiled server, beside the Python ones, in
// benchmarks/rpc_floor.py.
package main

import (
	"fmt"
	"log"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(lis.Addr().(*net.TCPAddr).Port)
	server := grpc.NewServer()
	healthpb.RegisterHealthServer(server, health.NewServer())
	if err := server.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
