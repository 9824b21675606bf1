print("lorafuse-bench")
