from toolgate import Client, Denied

client = Client(agent_id="billing-agent")  # $TOOLGATE_ADDRESS, else the daemon's own socket

@client.guard(tool_name="send_payment")
def send_payment(to: str, amount: float) -> str:
    return f"paid {amount} to {to}"

print(send_payment("c-19", 120.5))  # allowed: runs, then is recorded with status and duration
try:
    send_payment("c-19", 5000)  # the policy denies it: raises before the function runs
except Denied as e:
    print("denied:", e.reason, e.rule_id, e.decision_id)
client.close(timeout=5)  # returns once every recorded event is durable in the daemon
