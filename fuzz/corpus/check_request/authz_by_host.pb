
—
?

	127.0.0.1øÓ"*spiffe://cluster.local/ns/shop/sa/frontend

	127.0.0.1™u"¿¼
9264858893451243761GET
:methodGET

user-agent
curl/8.5.0

:authorityorders.example 
:path/orders/42?expand=items‹
authorizationùBearer eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFUzI1NiIsImtpZCI6Ilc4RzBEeEczWWVseS00SXQ1Y3dwR3hBaDI0SEhkNGtwWlRpc2tzdGpWWGMifQ.eyJpc3MiOiJodHRwOi8vYmF0b24tc3RzLmZ1enoiLCJzdWIiOiJhbGljZSIsImF1ZCI6ImZyb250ZW5kIiwiaWF0IjoxNzk1MzI2MjYyLCJleHAiOjIxMTA2ODYyNjIsImp0aSI6ImJYbElkUXA4QnRtSWk3RnpuWkJZeFEiLCJzY29wZSI6Im9yZGVycy5yZWFkIG9yZGVycy53cml0ZSIsIm1heV9hY3QiOnsic3ViIjoic3BpZmZlOi8vY2x1c3Rlci5sb2NhbC9ucy9zaG9wL3NhL2Zyb250ZW5kIn19.mKodNu7RYudF-l_is5m4f4udAUZYGTw5_5zlceibVtxebp_txciU2vFKLWPIMsXRVzVl7XRrOdGz3kM23F0obg4
x-request-id$4f1c7b9e-1d2a-4c8e-9a51-0b6e2f3d7a10
x-forwarded-protohttp
accept*/*
:schemehttp"/orders/42?expand=items*orders.example2httpRHTTP/1.1