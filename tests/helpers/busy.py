"""Say ready, then spin on the CPU until killed (a claude at work that draws nothing)."""

print("ready", flush=True)
while True:
    pass
