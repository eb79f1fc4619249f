import random, sys
# Web-server style access log: realistic repetition, varied fields.
random.seed(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
size = int(sys.argv[1])
paths = ["/api/v1/users/%d", "/api/v1/orders/%d/items", "/static/js/app.%x.js", "/healthz", "/login", "/search?q=%d"]
agents = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/119.0", "curl/8.4.0", "python-requests/2.31", "Go-http-client/2.0"]
out = sys.stdout.buffer
n = 0
t = 1700000000
lines = []
while n < size:
    t += random.randint(0, 3)
    p = random.choice(paths)
    if "%" in p: p = p % random.randint(1, 10**6)
    l = '%d.%d.%d.%d - - [%d] "GET %s HTTP/1.1" %d %d %.3f "%s" req=%016x\n' % (
        random.randint(1,255), random.randint(0,255), random.randint(0,255), random.randint(1,254),
        t, p, random.choice([200,200,200,200,304,404,500]), random.randint(100, 90000),
        random.random()*2, random.choice(agents), random.getrandbits(64))
    b = l.encode(); lines.append(b); n += len(b)
    if len(lines) > 10000:
        out.write(b"".join(lines)); lines = []
out.write(b"".join(lines))
