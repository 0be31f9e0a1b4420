# The client example of the original aiowstunnel README, unchanged but for host names
# ('host1' and 'srv' are 127.0.0.1 here, so that it runs on one machine).
import asyncio
import logging
import signal

from aiowstunnel.client import Client
import aiowstunnel


logging.basicConfig(level=logging.INFO)


async def provide_tunnel(stop):
    cli = Client(
        aiowstunnel.LISTEN,   # you need the server to listen
        '127.0.0.1', 9000,    # the tunnel server is listening on port 9000
        '0.0.0.0', 5678,      # the server listens here
        '127.0.0.1', 6789,    # the client connects here
    )
    cli.start()
    await stop
    await cli.close()


loop = asyncio.get_event_loop()

# install signal handler
stop = asyncio.Future()
loop.add_signal_handler(signal.SIGINT, stop.set_result, None)

loop.run_until_complete(provide_tunnel(stop))
