# The server example of the original aiowstunnel README, unchanged.
import asyncio
import signal
import logging

from aiowstunnel.server import Server


logging.basicConfig(level=logging.INFO)


async def serve(stop):
    srv = Server('0.0.0.0', 9000)
    srv.start()
    await stop
    await srv.close()


loop = asyncio.get_event_loop()

# install signal handler
stop = asyncio.Future()
loop.add_signal_handler(signal.SIGINT, stop.set_result, None)

loop.run_until_complete(serve(stop))
