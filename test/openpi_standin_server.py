"""A stand-in for an openpi policy server, in its own process: openpi's protocol built from
openpi_client's own msgpack helpers (as openpi.serving.websocket_policy_server does) and a
stand-in policy, so the policy node is tested against a server that is not ours.

    python test/openpi_standin_server.py --port-file F [--port P] [--metadata JSON] [--mode ok|nan|short|slow]
        [--delay S] [--record FILE] [--horizon 10] [--dims 7]

The policy: actions (horizon x dims) whose first 7 columns step joint 1 from the received
`observation/joint_position` by 0.01 rad per row (absolute joint positions), others 0.
Every observation received is recorded (keys, image shapes and dtypes, state, prompt) as one JSON
line in --record. Modes: nan (actions are NaN), short (one row fewer than --horizon), slow (sleeps
--delay seconds before answering).
"""
import argparse
import asyncio
import json
import time

import numpy as np
import websockets
from openpi_client import msgpack_numpy
from websockets.asyncio.server import serve


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--metadata", default="{}")
    p.add_argument("--mode", default="ok", choices=("ok", "nan", "short", "slow"))
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--record", default="")
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--dims", type=int, default=7)
    args = p.parse_args()
    metadata = json.loads(args.metadata)

    def policy(obs: dict) -> dict:
        if args.record:
            seen = {"keys": sorted(obs), "prompt": obs.get("prompt")}
            for k, v in obs.items():
                if isinstance(v, np.ndarray):
                    seen[k] = {"shape": list(v.shape), "dtype": str(v.dtype),
                               **({"values": v.tolist()} if v.size <= 16 else {"mean": float(v.mean())})}
            with open(args.record, "a") as f:
                f.write(json.dumps(seen) + "\n")
        q = np.asarray(obs.get("observation/joint_position", np.zeros(7)), np.float64)
        rows = args.horizon - (1 if args.mode == "short" else 0)
        actions = np.zeros((rows, args.dims))
        actions[:, :7] = q[:7]
        actions[:, 0] += 0.01 * np.arange(1, rows + 1)
        if args.mode == "nan":
            actions[:] = np.nan
        if args.mode == "slow":
            time.sleep(args.delay)
        return {"actions": actions}

    async def handler(ws):
        packer = msgpack_numpy.Packer()
        await ws.send(packer.pack(metadata))
        while True:
            try:
                obs = msgpack_numpy.unpackb(await ws.recv())
            except websockets.ConnectionClosed:
                return
            t0 = time.monotonic()
            out = await asyncio.to_thread(policy, obs)
            out["server_timing"] = {"infer_ms": (time.monotonic() - t0) * 1e3}
            await ws.send(packer.pack(out))

    async def run():
        async with serve(handler, "127.0.0.1", args.port, compression=None, max_size=None) as server:
            with open(args.port_file + ".tmp", "w") as f:
                f.write(str(server.sockets[0].getsockname()[1]))
            import os
            os.replace(args.port_file + ".tmp", args.port_file)
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
