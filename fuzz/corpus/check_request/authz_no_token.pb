
¦
?

	127.0.0.1øÓ"*spiffe://cluster.local/ns/shop/sa/frontend

	127.0.0.1™u"±®
9264858893451243761GET 
:path/orders/42?expand=items
accept*/*
x-forwarded-protohttp

:authorityorders.example4
x-request-id$4f1c7b9e-1d2a-4c8e-9a51-0b6e2f3d7a10

user-agent
curl/8.5.0
:schemehttp
:methodGET"/orders/42?expand=items*orders.example2httpRHTTP/1.1R
baton.destinationorders