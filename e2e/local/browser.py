#!/usr/bin/env python3
"""Loads a page in headless Chromium, waits (bounded) until a JavaScript condition holds,
checks that nothing overflows horizontally, and takes a screenshot. Standard library only:
it speaks the DevTools protocol over Chromium's --remote-debugging-pipe (file descriptors 3
and 4, NUL-terminated JSON), so it needs no WebSocket client and no driver.

  browser.py URL --size 390x844 --until 'JS expression' --timeout 30 --screenshot out.png
             [--report 'JS expression returning JSON']

Prints one JSON line: {"ok", "waited_s", "inner_width", "scroll_width", "report"}; exits 1
when the condition never held, the page overflows, or Chromium fails.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import time


class Pipe:
    def __init__(self, args):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def onto_3_and_4():
            # Chromium reads commands on fd 3 and writes replies on fd 4.
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            args, pass_fds=(3, 4, to_chrome_r, from_chrome_w), preexec_fn=onto_3_and_4,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0

    def send(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" not in self.buffer:
                chunk = os.read(self.from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe: " + self.stderr())
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise RuntimeError(f"{method}: no reply in {timeout}s")

    def stderr(self):
        self.proc.kill()
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def close(self):
        self.proc.kill()
        self.proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--size", default="1280x900")
    parser.add_argument("--until", default="true", help="a JavaScript expression to wait for")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--report", default="null", help="a JavaScript expression whose value is printed")
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))

    pipe = Pipe([args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--hide-scrollbars", "--remote-debugging-pipe", "--no-first-run",
                 f"--window-size={width},{height}", "about:blank"])
    result = {"ok": False}
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        mobile = width < 600
        pipe.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}, session)
        pipe.send("Page.enable", {}, session)
        pipe.send("Page.navigate", {"url": args.url}, session)

        def evaluate(expression):
            reply = pipe.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            if "exceptionDetails" in reply:
                return None
            return reply.get("result", {}).get("value")

        started = time.monotonic()
        held = False
        while time.monotonic() - started < args.timeout:
            if evaluate(f"Boolean({args.until})"):
                held = True
                break
            time.sleep(0.5)
        result["waited_s"] = round(time.monotonic() - started, 1)
        result["until_held"] = held
        result["inner_width"] = evaluate("window.innerWidth")
        result["scroll_width"] = evaluate("document.documentElement.scrollWidth")
        result["report"] = evaluate(f"JSON.stringify({args.report})")
        shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session)
        with open(args.screenshot, "wb") as out:
            out.write(base64.b64decode(shot["data"]))
        result["ok"] = held and result["scroll_width"] is not None and result["scroll_width"] <= result["inner_width"]
    except (RuntimeError, OSError, KeyError) as err:
        result["error"] = str(err)
    finally:
        pipe.close()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
