"""A gRPC app and client written with grpcio (no generated stubs), to check
that gRPC crosses Signet proxies unchanged: HTTP/2, trailers, status codes.

    grpc_echo.py serve PORT            echo server (h2c) on 127.0.0.1:PORT;
                                       prints "serving" when ready
    grpc_echo.py call TARGET METHOD [ROOT KEY CHAIN SERVER_NAME]
        calls /demo.Echo/METHOD with b"ping" (mTLS when the files are
        given); prints "OK <reply> <trailer x-answer>" or "ERR <code>"
"""
import sys
import time
from concurrent import futures

import grpc


def serve(port):
    def echo(request, context):
        context.set_trailing_metadata((("x-answer", "42"),))
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "demo.Echo",
        {
            "Allowed": grpc.unary_unary_rpc_method_handler(echo),
            "Denied": grpc.unary_unary_rpc_method_handler(echo),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("serving", flush=True)
    while True:
        time.sleep(3600)


def call(target, method, tls):
    if tls:
        root, key, chain, name = tls
        creds = grpc.ssl_channel_credentials(
            root_certificates=open(root, "rb").read(),
            private_key=open(key, "rb").read(),
            certificate_chain=open(chain, "rb").read(),
        )
        channel = grpc.secure_channel(
            target, creds, options=(("grpc.ssl_target_name_override", name),)
        )
    else:
        channel = grpc.insecure_channel(target)
    stub = channel.unary_unary("/demo.Echo/" + method)
    try:
        reply, rpc = stub.with_call(b"ping", timeout=10)
        trailer = dict(rpc.trailing_metadata() or ()).get("x-answer", "")
        print("OK %s %s" % (reply.decode(), trailer))
    except grpc.RpcError as e:
        print("ERR %s %s" % (e.code().name, e.details()))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4:8] if len(sys.argv) > 4 else None)
